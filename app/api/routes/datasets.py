"""/v1/datasets: upload (streamed, capped, validated by hostcp_core's loaders) and read."""

from __future__ import annotations

import hashlib
import os
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, File, Form, Header, Query, Request, UploadFile
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError

from app.api.deps import PrincipalDep, SessionDep, SettingsDep
from app.api.idempotency import Idempotency, check_key
from app.api.pagination import clamp_page_size, decode_token, encode_token
from app.api.schemas import DatasetPublic, DatasetsPage
from app.core import problems
from app.core.problems import Problem
from app.db import repo
from app.db.models import DatasetRecord
from app.storage import Storage, TooLarge, TooManyClasses, dataset_arrays, file_chunks
from app.upload_checks import check_width, postcheck, precheck, too_many_classes

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])

_DEFAULT_SUFFIX = {"csv": ".csv", "parquet": ".parquet", "npz": ".npz", "libsvm": ".libsvm"}


def _format_and_suffix(filename: str, fmt: str | None) -> tuple[str, str]:
    from hostcp_core import DataError
    from hostcp_core.loaders import FORMATS, detect_format

    suffix = os.path.splitext(filename)[1].lower()
    if fmt is not None:
        if fmt not in FORMATS:
            raise Problem(problems.INVALID_REQUEST, f"format must be one of {', '.join(FORMATS)}")
        # keep .tsv (it selects the separator); otherwise the format's own suffix
        return fmt, suffix if suffix == ".tsv" and fmt == "csv" else _DEFAULT_SUFFIX[fmt]
    try:
        fmt = detect_format(filename)
    except DataError as exc:
        raise Problem(problems.INVALID_DATA, str(exc)) from None
    return fmt, suffix


@router.post("", status_code=201, response_model=DatasetPublic,
             responses={200: {"model": DatasetPublic, "description": "already uploaded"}})
def upload_dataset(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    file: Annotated[UploadFile, File(description="CSV, Parquet, NPZ or LIBSVM")],
    label_column: Annotated[str | None, Form()] = None,
    id_column: Annotated[str | None, Form()] = None,
    format: Annotated[str | None, Form(description="csv, parquet, npz or libsvm; default: "
                                                   "from the file name")] = None,
    idempotency_key: Annotated[str | None, Header()] = None,
):
    """Upload one labelled table. A re-upload of the same bytes with the same options returns
    the existing dataset (200)."""
    filename = os.path.basename(file.filename or "upload")[:255] or "upload"
    fmt, suffix = _format_and_suffix(filename, format)
    idem_key = check_key(idempotency_key)  # refuse a malformed key before storing anything
    store = Storage(settings.storage_root)
    try:
        stored = store.write_stream(file_chunks(file.file), suffix=suffix,
                                    max_bytes=settings.max_upload_bytes)
    except TooLarge:
        raise Problem(problems.DATASET_TOO_LARGE,
                      f"uploads are limited to {settings.max_upload_bytes} bytes") from None
    content_key = hashlib.sha256(
        f"{stored.sha256}|{fmt}|{label_column or ''}|{id_column or ''}".encode()).hexdigest()
    idem = Idempotency(request.app.state.sessionmaker, owner_id=principal.id,
                       key=idem_key, ttl_s=settings.idempotency_ttl_s)
    try:
        replay = idem.begin(content_key)
    except BaseException:  # a mismatched or in-flight key: keep nothing of this upload
        store.delete(stored.rel_path)
        raise
    if replay is not None:
        store.delete(stored.rel_path)
        return replay
    array_path, committed = None, False
    try:
        existing = repo.find_dataset_by_content(session, owner_id=principal.id,
                                                content_key=content_key)
        if existing is not None:
            store.delete(stored.rel_path)
            return _already_uploaded(existing, idem)
        precheck(store.path(stored.rel_path), fmt, max_upload_bytes=settings.max_upload_bytes,
                 max_features=settings.max_features)
        ds, array_path = _parse(store, store.path(stored.rel_path), fmt, settings,
                                label_column=label_column, id_column=id_column, name=filename)
        rec = repo.add_dataset(
            session, owner_id=principal.id, dataset=ds, array_path=array_path, name=filename,
            fmt=fmt, sha256=stored.sha256, content_key=content_key, size_bytes=stored.size,
            raw_path=stored.rel_path, label_column=label_column, id_column=id_column)
        try:
            session.commit()
        except IntegrityError:
            # a concurrent upload of the same bytes and options committed first: answer with it
            session.rollback()
            existing = repo.find_dataset_by_content(session, owner_id=principal.id,
                                                    content_key=content_key)
            if existing is None:
                raise
            store.delete(stored.rel_path)
            store.delete(array_path)
            return _already_uploaded(existing, idem)
        committed = True
        body = DatasetPublic.model_validate(rec)
        headers = {"Location": f"/v1/datasets/{rec.id}"}
        idem.complete(201, body.model_dump(mode="json"), headers)
        return JSONResponse(body.model_dump(mode="json"), status_code=201, headers=headers)
    except BaseException:
        idem.abandon()
        if not committed:  # any failure before the row exists leaves no file behind
            store.delete(stored.rel_path)
            if array_path is not None:
                store.delete(array_path)
        raise


def _parse(store: Storage, path, fmt: str, settings, *, label_column: str | None,
           id_column: str | None, name: str):
    """Parse the stored upload into canonical arrays: (what the dataset record needs, their
    path). CSV and Parquet are streamed batch by batch (the process's memory does not grow with
    the file); NPZ and LIBSVM are read whole (capped by their expansion in ``precheck``)."""
    import hostcp_core
    from hostcp_core import DataError
    from hostcp_core.loaders import STREAM_FORMATS, TableStream

    try:
        if fmt in STREAM_FORMATS:
            stream = TableStream(path, format=fmt, label_column=label_column,
                                 id_column=id_column, name=name)
            check_width(stream.n_features, max_features=settings.max_features)
            try:
                table = store.save_stream(stream, max_classes=settings.max_classes)
            except TooManyClasses as exc:
                too_many_classes(exc.n, max_classes=settings.max_classes)
            return table, table.array_path
        ds = hostcp_core.load_dataset(path, format=fmt, label_column=label_column,
                                      id_column=id_column, name=name)
    except DataError as exc:
        raise Problem(problems.INVALID_DATA, str(exc)) from None
    postcheck(ds, max_features=settings.max_features, max_classes=settings.max_classes)
    return ds, store.save_arrays(dataset_arrays(ds))


def _already_uploaded(existing: DatasetRecord, idem: Idempotency) -> JSONResponse:
    body = DatasetPublic.model_validate(existing).model_dump(mode="json")
    headers = {"Location": f"/v1/datasets/{existing.id}"}
    idem.complete(200, body, headers)
    return JSONResponse(body, status_code=200, headers=headers)


@router.get("", response_model=DatasetsPage)
def list_datasets(session: SessionDep, settings: SettingsDep, principal: PrincipalDep,
                  page_size: Annotated[int | None, Query()] = None,
                  page_token: Annotated[str | None, Query()] = None) -> DatasetsPage:
    size = clamp_page_size(page_size, settings.page_size_default, settings.page_size_max)
    scope = f"datasets:{principal.id}"
    after = None
    if page_token:
        ts, ident = decode_token(settings.secret_key, scope, page_token)
        after = (datetime.fromisoformat(ts), ident)
    rows = repo.list_datasets(session, owner_id=principal.id, after=after, limit=size + 1)
    token = None
    if len(rows) > size:
        rows = rows[:size]
        token = encode_token(settings.secret_key, scope,
                             [rows[-1].created_at.isoformat(), rows[-1].id])
    return DatasetsPage(items=[DatasetPublic.model_validate(r) for r in rows],
                        next_page_token=token)


@router.get("/{dataset_id}", response_model=DatasetPublic)
def get_dataset(dataset_id: str, session: SessionDep, principal: PrincipalDep) -> DatasetPublic:
    rec = repo.get_dataset(session, owner_id=principal.id, dataset_id=dataset_id)
    if rec is None:  # also for another key's dataset: its existence is not disclosed
        raise Problem(problems.NOT_FOUND, f"no dataset {dataset_id}")
    return DatasetPublic.model_validate(rec)
