#!/usr/bin/env python3
"""An independent Avro decoder for the Rust tests: it shares no code with slo-probe, so what it
decodes is a second opinion on what slo-probe encoded.

Python 3.11, the standard library and fastavro (pinned 1.12.1; .ci/run installs it into
.ci/venv).

Usage:
    python tests/avro_decode.py --registry URL    # Confluent wire format
    python tests/avro_decode.py --schema FILE.avsc  # plain Avro binary, no header

Reads stdin: one JSON object per line, {"value_b64": "<base64 of the Kafka record value>"}.
Writes stdout: one JSON line per input line, in order:
    --registry: {"schema_id": N, "value": <decoded>}
    --schema:   {"value": <decoded>}
    on any failure for that line: {"error": "<what went wrong>"}
(blank input lines are skipped) and carries on with the next line; the exit code is 0 (2 for bad arguments).

--registry: the value must be in the Confluent wire format, a magic byte 0, the schema id as 4
bytes big-endian, then the Avro binary. The schema is fetched from GET URL/schemas/ids/{id}
(once per id) and the rest decoded with it as both writer and reader schema.

How decoded values are printed as JSON: bytes and fixed as latin-1 strings (each byte one code
point, U+0000..U+00FF); everything else JSON has no type for goes through str(): logical types
come out as fastavro returns them, so timestamp-millis/-micros as ISO datetimes with an offset
("2024-05-01 12:00:00.123000+00:00"), date as "2024-05-01", time-millis/-micros as
"12:00:00.123000", uuid as its canonical string, decimal as its decimal string.
"""

import argparse
import base64
import io
import json
import struct
import sys
import urllib.request

import fastavro


def to_jsonable(v):
    """The decoded value with bytes turned into latin-1 strings (json.dumps's default= only sees
    values it cannot serialize, and handles dict keys not at all, so bytes are mapped here)."""
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).decode("latin-1")
    if isinstance(v, dict):
        return {k: to_jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [to_jsonable(x) for x in v]
    return v


class Registry:
    """Schemas fetched from a Schema Registry by id, each fetched once."""

    def __init__(self, url):
        self.url = url.rstrip("/")
        self.schemas = {}

    def schema(self, schema_id):
        if schema_id not in self.schemas:
            url = f"{self.url}/schemas/ids/{schema_id}"
            req = urllib.request.Request(
                url, headers={"Accept": "application/vnd.schemaregistry.v1+json"}
            )
            with urllib.request.urlopen(req, timeout=30) as r:
                body = json.load(r)
            self.schemas[schema_id] = fastavro.parse_schema(json.loads(body["schema"]))
        return self.schemas[schema_id]


def decode_registry(value, registry):
    if len(value) < 5:
        raise ValueError(f"{len(value)} bytes: too short for the wire format header")
    if value[0] != 0:
        raise ValueError(f"magic byte {value[0]}, expected 0")
    (schema_id,) = struct.unpack(">I", value[1:5])
    schema = registry.schema(schema_id)
    decoded = read_exactly(value[5:], schema)
    return {"schema_id": schema_id, "value": decoded}


def decode_plain(value, schema):
    return {"value": read_exactly(value, schema)}


def read_exactly(data, schema):
    """The one datum in `data`; an error when bytes are left over."""
    buf = io.BytesIO(data)
    decoded = fastavro.schemaless_reader(buf, schema, None)
    left = len(data) - buf.tell()
    if left:
        raise ValueError(f"{left} bytes left after the datum")
    return decoded


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--registry", metavar="URL", help="Schema Registry base URL")
    mode.add_argument("--schema", metavar="FILE.avsc", help="Avro schema file")
    args = p.parse_args()

    if args.registry:
        registry = Registry(args.registry)
        decode = lambda value: decode_registry(value, registry)  # noqa: E731
    else:
        try:
            with open(args.schema, encoding="utf-8") as f:
                schema = fastavro.parse_schema(json.load(f))
        except Exception as e:  # still one answer per line, each the error
            schema_error = f"schema {args.schema}: {type(e).__name__}: {e}"

            def decode(_value):
                raise RuntimeError(schema_error)
        else:
            decode = lambda value: decode_plain(value, schema)  # noqa: E731

    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            value = base64.b64decode(json.loads(line)["value_b64"], validate=True)
            out = json.dumps(to_jsonable(decode(value)), default=str)
        except Exception as e:
            out = json.dumps({"error": f"{type(e).__name__}: {e}"})
        print(out, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
