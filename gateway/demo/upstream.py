"""The demo "legacy customer system": an aiohttp app that leaks everything.

It is deliberately careless in the ways real legacy systems are, because those
are what the gateway in front of it must handle: whole customer records on every
call, no cap on page size, XML and CSV exports, gzip when asked, and a 500 whose
Java stack trace quotes the customer's ID number and phone.

Run it alone with ``python -m gateway.demo.upstream --host 127.0.0.1 --port 9000``.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import itertools
import json
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.demo.data import CUSTOMER_FIELDS, Customer, branches, generate_customers, to_json_bytes

CUSTOMERS = web.AppKey[list[Customer]]("customers")
CUSTOMERS_BY_ID = web.AppKey[dict[int, Customer]]("customers_by_id")
NOTE_IDS = web.AppKey[Iterator[int]]("note_ids")

JSON_TYPE = "application/json"
_COMPRESSIBLE = frozenset({JSON_TYPE, "application/xml", "text/csv"})
_CSV_COLUMNS = (*(f for f in CUSTOMER_FIELDS if f != "accounts"), "account_numbers")


class LegacyError(Exception):
    """A client error the legacy app answers with its own JSON error shape."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether an ``Accept-Encoding`` value allows gzip (RFC 9110 §12.5.3).

    A missing header is treated as "plain only": strictly it allows any coding,
    but a fixture that compresses for clients that never asked is no help.
    """
    if not accept_encoding:
        return False
    gzip_q: float | None = None
    star_q: float | None = None
    for item in accept_encoding.split(","):
        coding, _, params = item.partition(";")
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
        coding = coding.strip().lower()
        if coding in ("gzip", "x-gzip"):
            gzip_q = q
        elif coding == "*":
            star_q = q
    # An explicit gzip entry wins over "*" (e.g. "*, gzip;q=0" refuses gzip).
    q_gzip = gzip_q if gzip_q is not None else star_q
    return q_gzip is not None and q_gzip > 0


def page_params(query: Any) -> tuple[int, int]:
    """``(page, size)`` from a query mapping; defaults 1 and 20, no upper bound."""
    result = []
    for name, default in (("page", 1), ("size", 20)):
        raw = query.get(name)
        if raw is None:
            result.append(default)
            continue
        # isdigit alone accepts "²" and Arabic-Indic digits, which int() then mangles.
        if not (raw.isascii() and raw.isdigit()) or len(raw) > 9 or int(raw) < 1:
            raise LegacyError(400, f"{name} must be a positive integer")
        result.append(int(raw))
    return result[0], result[1]


def _page(request: web.Request) -> tuple[list[Customer], int, int, int]:
    page, size = page_params(request.query)
    customers = request.app[CUSTOMERS]
    start = (page - 1) * size
    return customers[start : start + size], page, size, len(customers)


def _customer(request: web.Request) -> Customer:
    customer = request.app[CUSTOMERS_BY_ID].get(int(request.match_info["id"]))
    if customer is None:
        raise LegacyError(404, "not found")
    return customer


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=to_json_bytes(payload), status=status, content_type=JSON_TYPE, charset="utf-8"
    )


def _text(value: Any) -> str:
    return format(value, "f") if isinstance(value, Decimal) else str(value)


def _xml_element(tag: str, value: Any) -> ET.Element:
    element = ET.Element(tag)
    if isinstance(value, dict):
        element.extend(_xml_element(k, v) for k, v in value.items())
    elif isinstance(value, list):
        element.extend(_xml_element(tag.removesuffix("s"), v) for v in value)
    else:
        element.text = _text(value)
    return element


async def health(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def list_customers(request: web.Request) -> web.Response:
    data, page, size, total = _page(request)
    return _json({"data": data, "page": page, "size": size, "total": total})


async def get_customer(request: web.Request) -> web.Response:
    return _json({"data": _customer(request)})


async def export_xml(request: web.Request) -> web.Response:
    data, page, size, total = _page(request)
    root = ET.Element("customers", page=str(page), size=str(size), total=str(total))
    root.extend(_xml_element("customer", c) for c in data)
    ET.indent(root)
    body = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return web.Response(body=body, content_type="application/xml", charset="utf-8")


async def export_csv(request: web.Request) -> web.Response:
    data, *_ = _page(request)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(_CSV_COLUMNS)
    for c in data:
        numbers = ";".join(a["number"] for a in c["accounts"])
        writer.writerow([_text(c[f]) for f in _CSV_COLUMNS[:-1]] + [numbers])
    return web.Response(body=out.getvalue().encode(), content_type="text/csv", charset="utf-8")


async def statement(request: web.Request) -> web.Response:
    c = _customer(request)
    trace = (
        "java.lang.IllegalStateException: statement render failed for "
        f"customer_no={c['customer_no']} id_card={c['id_number']} mobile={c['phone']}\n"
        "\tat com.legacybank.crm.statement.StatementService.render(StatementService.java:214)\n"
        "\tat com.legacybank.crm.statement.StatementController.get(StatementController.java:88)\n"
        "\tat sun.reflect.NativeMethodAccessorImpl.invoke0(Native Method)\n"
        "\tat org.springframework.web.servlet.FrameworkServlet.service(FrameworkServlet.java:897)\n"
        "Caused by: java.sql.SQLException: ORA-01403: no data found\n"
        f"\tSQL: SELECT * FROM T_STATEMENT WHERE ID_NO = '{c['id_number']}'\n"
        "\tat oracle.jdbc.driver.T4CTTIoer.processError(T4CTTIoer.java:450)\n"
        "\t... 42 more\n"
    )
    return web.Response(status=500, text=trace, content_type="text/plain", charset="utf-8")


async def list_branches(request: web.Request) -> web.Response:
    return _json(branches())


async def create_note(request: web.Request) -> web.Response:
    try:
        # parse_float=Decimal so "1.10" echoes back as 1.10, as a Java backend would.
        note = json.loads(await request.read(), parse_float=Decimal)
    except (ValueError, UnicodeDecodeError) as exc:
        raise LegacyError(400, "body must be JSON") from exc
    if not isinstance(note, dict):
        raise LegacyError(400, "body must be a JSON object")
    ids = request.app[NOTE_IDS]
    note_id = next(ids)
    return _json({"id": note_id, **{k: v for k, v in note.items() if k != "id"}}, status=201)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer client errors as ``{"error": ..., "code": ...}``, like the legacy app."""
    try:
        return await handler(request)
    except LegacyError as exc:
        return _json({"error": exc.message, "code": exc.status}, status=exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = _json({"error": exc.reason.lower(), "code": exc.status}, status=exc.status)
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response


@web.middleware
async def gzip_bodies(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Compress JSON, XML and CSV bodies when the client accepts gzip."""
    response = await handler(request)
    if not isinstance(response, web.Response) or response.content_type not in _COMPRESSIBLE:
        return response
    # Vary on every negotiable response, compressed or not, so caches keep both.
    response.headers.add("Vary", "Accept-Encoding")
    body = response.body
    if isinstance(body, bytes) and body and accepts_gzip(request.headers.get("Accept-Encoding")):
        # mtime=0 keeps the bytes deterministic for tests.
        response.body = gzip.compress(body, mtime=0)
        response.headers["Content-Encoding"] = "gzip"
    return response


def create_app(customers: list[Customer] | None = None) -> web.Application:
    """The legacy app serving ``customers`` (default: ``generate_customers()``)."""
    app = web.Application(middlewares=[gzip_bodies, json_errors])
    app[CUSTOMERS] = generate_customers() if customers is None else customers
    app[CUSTOMERS_BY_ID] = {c["id"]: c for c in app[CUSTOMERS]}
    app[NOTE_IDS] = itertools.count(1)
    app.router.add_get("/health", health)
    app.router.add_get("/api/customers", list_customers)
    # Before "{id}" so the export names are never read as ids.
    app.router.add_get("/api/customers/export.xml", export_xml)
    app.router.add_get("/api/customers/export.csv", export_csv)
    # [0-9], not \d: \d matches non-ASCII digits that int() would quietly accept.
    app.router.add_get("/api/customers/{id:[0-9]{1,9}}", get_customer)
    app.router.add_get("/api/customers/{id:[0-9]{1,9}}/statement", statement)
    app.router.add_get("/api/ops/branches", list_branches)
    app.router.add_post("/api/ops/notes", create_note)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Demo legacy customer system")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--count", type=int, default=500, help="number of customers")
    parser.add_argument("--seed", type=int, default=20261124)
    args = parser.parse_args(argv)
    web.run_app(
        create_app(generate_customers(args.count, args.seed)), host=args.host, port=args.port
    )


if __name__ == "__main__":
    main()
