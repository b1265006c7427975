"""The paper's baselines and the cheap valuers, one module per method.

Each module holds one :class:`hostcp_core.valuer.Valuer` subclass, registered by name in
``hostcp_core.valuer.METHODS``; import them through ``get_valuer`` so that listing methods stays
cheap. Every valuer returns one score per training point, higher = more valuable.
"""
