"""An mkdocs hook: the API reference page, rendered from ``uploader/openapi.json`` at build time.

The spec is the one source of the API's shape (the service serves it, CI fuzzes the service
against it), so the reference is made from it on every build, never copied by hand. It
becomes ``api-reference.md``, a page that exists only in the build: an operation per heading
(its anchor is its ``operationId``), then every schema (anchor ``schema-<name>``). Plain
Markdown out, so the site needs no JavaScript to show it.
"""

import json
from pathlib import Path

from mkdocs.structure.files import File

SPEC = "uploader/openapi.json"
PAGE = "api-reference.md"
METHODS = ("get", "head", "post", "put", "patch", "delete")
SHORT_EXAMPLE = 160  # characters: an example this short fits in its table cell


def on_files(files, config):
    """Adds the rendered page to the site's files, so the nav and links can name it."""
    files.append(File.generated(config, PAGE, content=render(json.loads(_spec_path(config).read_text()))))
    return files


def on_serve(server, config, builder):
    """`mkdocs serve` rebuilds when the spec changes, as it does for a page."""
    server.watch(str(_spec_path(config)))
    return server


def _spec_path(config):
    return Path(config.config_file_path).parent / SPEC


def render(spec):
    """The whole page, as Markdown."""
    resolve = _Resolver(spec)
    info = spec["info"]
    out = [
        "# API reference",
        "",
        f"Rendered at build time from `{SPEC}` (OpenAPI {spec['openapi']}, API version"
        f" {info['version']}); the service serves the same document at `GET /openapi.json`."
        " The [API](api.md) page shows it in use.",
        "",
        info.get("description", ""),
        "",
    ]
    operations = list(_operations(spec))
    declared = {tag["name"] for tag in spec.get("tags", [])}
    for tag in spec.get("tags", []):
        out += [f"## {tag['name'].capitalize()}", "", tag.get("description", ""), ""]
        for path, method, operation, shared_params in operations:
            if tag["name"] in operation.get("tags", []):
                out += _operation(resolve, path, method, operation, shared_params)
    untagged = [op for op in operations if not declared & set(op[2].get("tags", []))]
    if untagged:  # an operation under no declared tag is shown too, never dropped
        out += ["## Other operations", ""]
        for path, method, operation, shared_params in untagged:
            out += _operation(resolve, path, method, operation, shared_params)
    out += ["## Schemas", ""]
    for name, schema in spec["components"]["schemas"].items():
        out += _schema(resolve, name, schema)
    schemes = spec["components"].get("securitySchemes", {})
    if schemes:
        out += ["## Security schemes", ""]
        for name, scheme in schemes.items():
            kind = " ".join(str(scheme.get(k)) for k in ("type", "scheme") if scheme.get(k))
            out += [f"- `{name}` ({kind}): {scheme.get('description', '')}", ""]
    return "\n".join(out) + "\n"


def _operations(spec):
    for path, item in spec["paths"].items():
        for method in METHODS:
            if method in item:
                yield path, method, item[method], item.get("parameters", [])


def _operation(resolve, path, method, operation, shared_params):
    out = [f"### `{method.upper()} {path}` {{#{operation['operationId']}}}", ""]
    out += [f"**{operation.get('summary', '')}**", ""]
    if operation.get("description"):
        out += [operation["description"], ""]
    if any(requirement for requirement in operation.get("security", [])):
        out += ["Needs `Authorization: Bearer <key>` when the service has API keys"
                " (see [Security schemes](#security-schemes)).", ""]
    params = [resolve(p) for p in shared_params + operation.get("parameters", [])]
    if params:
        out += ["| parameter | in | type | required | description |", "|---|---|---|---|---|"]
        for p in params:
            description = _join(p.get("description", ""), _constraints(p.get("schema", {})),
                                _example(p.get("example")))
            out.append(_row(f"`{p['name']}`", p["in"], _type(resolve, p.get("schema", {})),
                            "yes" if p.get("required") else "no", description))
        out.append("")
    body = operation.get("requestBody")
    if body:
        for media, content in body.get("content", {}).items():
            required = "required" if body.get("required") else "optional"
            out += [f"Request body ({required}): `{media}`, {_type(resolve, content.get('schema', {}))}.", ""]
            if "example" in content:
                out += _json_block(content["example"])
    out += ["| status | meaning | body | headers |", "|---|---|---|---|"]
    examples = []
    for status, response in operation.get("responses", {}).items():
        response = resolve(response)
        bodies, headers = [], []
        for media, content in response.get("content", {}).items():
            body = f"`{media}`: {_type(resolve, content.get('schema', {}))}"
            if "example" in content:
                short = json.dumps(content["example"])
                if len(short) <= SHORT_EXAMPLE:
                    body += f"<br>e.g. `{short}`"
                else:
                    examples.append((status, content["example"]))
            bodies.append(body)
        for name, header in response.get("headers", {}).items():
            header = resolve(header)
            headers.append(f"`{name}`: {header.get('description', '')}")
        meaning = response.get("description", "")
        for name, link in response.get("links", {}).items():
            meaning = _join(meaning, f"Next: [`{link['operationId']}`](#{link['operationId']}).")
        out.append(_row(f"`{status}`", meaning, "<br>".join(bodies) or "none", "<br>".join(headers)))
    out.append("")
    for status, example in examples:
        out += [f"Example `{status}`:", ""] + _json_block(example)
    return out


def _schema(resolve, name, schema):
    out = [f"### {name} {{#schema-{name.lower()}}}", ""]
    if schema.get("description"):
        out += [schema["description"], ""]
    parts = schema.get("allOf", [schema])
    if "allOf" in schema:
        whole = [_type(resolve, part) for part in parts if "$ref" in part]
        out += ["All of " + " and ".join(whole) + ", with the fields below narrowed.", ""]
    fields = [row for part in parts if "$ref" not in part for row in _fields(resolve, part, "")]
    if fields:
        out += ["| field | type | required | description |", "|---|---|---|---|"]
        out += [_row(*row) for row in fields]
        out.append("")
    elif "allOf" not in schema:
        out += [_join(f"Type: {_type(resolve, schema)}.", _example(schema.get("example"))), ""]
    if schema.get("additionalProperties") is False:
        out += ["No other fields.", ""]
    if "not" in _merged(parts) and "required" in _merged(parts)["not"]:
        fields_absent = ", ".join(f"`{f}`" for f in _merged(parts)["not"]["required"])
        out += [f"Never carries {fields_absent}.", ""]
    return out


def _merged(parts):
    merged = {}
    for part in parts:
        if "$ref" not in part:
            merged.update(part)
    return merged


def _fields(resolve, schema, prefix):
    """Rows of an object's fields; a nested object's fields follow it, dotted."""
    required = set(schema.get("required", []))
    for name, prop in schema.get("properties", {}).items():
        dotted = prefix + name
        yield (f"`{dotted}`", _type(resolve, prop), "yes" if name in required else "no",
               _join(prop.get("description", ""), _constraints(prop), _example(prop.get("example"))))
        if prop.get("type") == "object" and "properties" in prop:
            yield from _fields(resolve, prop, dotted + ".")


def _type(resolve, schema):
    """A schema's type in a few words, a reference as a link to its schema."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#schema-{name.lower()})"
    if "allOf" in schema:
        return " and ".join(_type(resolve, part) for part in schema["allOf"])
    kind = schema.get("type", "any")
    if kind == "array":
        kind = f"array of {_type(resolve, schema.get('items', {}))}"
    elif schema.get("format"):
        kind = f"{kind} ({schema['format']})"
    if schema.get("enum"):
        kind += ": " + ", ".join(f"`{value}`" for value in schema["enum"])
    if schema.get("nullable"):
        kind += " or null"
    return kind


def _constraints(schema):
    said = []
    for key, words, unit in (("minimum", "at least", ""), ("maximum", "at most", ""),
                             ("minItems", "at least", " item"), ("maxLength", "at most", " character")):
        if key in schema:
            plural = "s" if unit and schema[key] != 1 else ""
            said.append(f"{words} {schema[key]}{unit}{plural}")
    if "pattern" in schema:
        said.append(f"pattern `{schema['pattern']}`")
    return ("(" + "; ".join(said) + ")") if said else ""


def _example(value):
    return f"Example: `{json.dumps(value)}`." if value is not None else ""


def _json_block(value):
    return ["```json", json.dumps(value, indent=2), "```", ""]


def _join(*parts):
    return " ".join(part for part in parts if part)


def _row(*cells):
    """A table row; a cell's own line breaks and pipes must not end the row or the cell."""
    return "| " + " | ".join(str(cell).replace("\n", "<br>").replace("|", "\\|") for cell in cells) + " |"


class _Resolver:
    """Follows a local ``$ref`` (``#/components/...``) to what it names; anything else as is."""

    def __init__(self, spec):
        self.spec = spec

    def __call__(self, node):
        while isinstance(node, dict) and "$ref" in node and node["$ref"].startswith("#/components/") \
                and not node["$ref"].startswith("#/components/schemas/"):
            target = self.spec
            for key in node["$ref"][2:].split("/"):
                target = target[key]
            node = target
        return node
