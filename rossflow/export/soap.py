"""SOAP/XML delivery rules: the headers an envelope is posted with, and faults in replies.

Enough for the NetSuite and Workday patterns: the envelope is rendered by a template step
(``format: xml``) and posted by a ``soap`` step; values are read from the reply by an
``extract`` step with ``source_step`` and ``xpath`` rules.

* SOAP 1.1: ``Content-Type: text/xml; charset=utf-8`` and ``SOAPAction: "<action>"``
  (quoted, as the WS-I Basic Profile requires; empty quotes when there is no action).
* SOAP 1.2: ``Content-Type: application/soap+xml; charset=utf-8; action="<action>"``.
* A ``Fault`` element in the reply body is an error whatever the HTTP status (servers answer
  faults with 500, and some with 200).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lxml import etree

__all__ = ["SOAP_NAMESPACES", "soap_fault", "soap_headers"]

SOAP_NAMESPACES = {
    "1.1": "http://schemas.xmlsoap.org/soap/envelope/",
    "1.2": "http://www.w3.org/2003/05/soap-envelope",
}


def soap_headers(version: str, action: str | None) -> dict[str, str]:
    """Content type (and action header) of a SOAP request."""
    if version == "1.2":
        ctype = "application/soap+xml; charset=utf-8"
        if action:
            ctype += f'; action="{action}"'
        return {"Content-Type": ctype}
    return {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": f'"{action or ""}"'}


def _text(node: Any, path: str, ns: Mapping[str, str]) -> str:
    found = node.xpath(path, namespaces=dict(ns))
    if not found:
        return ""
    first = found[0]
    return (first if isinstance(first, str) else "".join(first.itertext())).strip()


def soap_fault(body: bytes | str | None) -> str | None:
    """``"<code>: <reason>"`` when the reply is a SOAP Fault (1.1 or 1.2), else ``None``."""
    if not body:
        return None
    data = body.encode("utf-8") if isinstance(body, str) else body
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
    try:
        root = etree.fromstring(data, parser=parser)
    except etree.XMLSyntaxError:
        return None
    for version, uri in SOAP_NAMESPACES.items():
        ns = {"s": uri}
        faults = root.xpath("/s:Envelope/s:Body/s:Fault", namespaces=ns)
        if not faults:
            continue
        fault = faults[0]
        if version == "1.1":
            code = _text(fault, "faultcode", {})
            reason = _text(fault, "faultstring", {})
            detail = _text(fault, "detail", {})
        else:
            code = _text(fault, "s:Code/s:Value", ns)
            sub = _text(fault, "s:Code/s:Subcode/s:Value", ns)
            code = f"{code}/{sub}" if sub else code
            reason = _text(fault, "s:Reason/s:Text", ns)
            detail = _text(fault, "s:Detail", ns)
        message = f"{code or 'Fault'}: {reason or 'no reason given'}"
        return message + (f" ({detail[:200]})" if detail else "")
    return None
