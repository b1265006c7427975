"""Evaluation of values and subsets (paper section 4) and the mislabel report."""

from hostcp_core.evaluation.curves import (
    DEFAULT_FRACTIONS,
    addition_curve,
    fix_and_retrain_curve,
    random_order,
    removal_curve,
    subset_accuracy,
)
from hostcp_core.evaluation.detection import (
    flip_detection_scores,
    flips_found_curve,
    two_means_split,
)
from hostcp_core.evaluation.label_errors import LabelErrorDetector, flag_errors
from hostcp_core.evaluation.mislabels import REPORT_COLUMNS, mislabel_report, out_of_fold_proba
from hostcp_core.evaluation.ranking import (
    class_distribution,
    ndcg_at_k,
    paper_ranking,
    positions,
    rank_values,
)

__all__ = [
    "DEFAULT_FRACTIONS",
    "LabelErrorDetector",
    "REPORT_COLUMNS",
    "addition_curve",
    "class_distribution",
    "flag_errors",
    "fix_and_retrain_curve",
    "flip_detection_scores",
    "flips_found_curve",
    "mislabel_report",
    "ndcg_at_k",
    "out_of_fold_proba",
    "paper_ranking",
    "positions",
    "rank_values",
    "random_order",
    "removal_curve",
    "subset_accuracy",
    "two_means_split",
]
