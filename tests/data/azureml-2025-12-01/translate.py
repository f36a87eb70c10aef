#!/usr/bin/env python3
"""Translates the OpenAPI 2.0 definitions copied into *.excerpt.json into one JSON Schema
(draft 2020-12) document, azureml.schema.json, mechanically (see README.md for the rules).

Run from anywhere: python3 tests/data/azureml-2025-12-01/translate.py
"""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
COMMON = "../../../../../common-types/resource-management/v3/types.json#/definitions/"
INT32 = {"minimum": -(2**31), "maximum": 2**31 - 1}


def load():
    defs = {}
    for name in [
        "common-types-v3.excerpt.json",
        "mfe.excerpt.json",
        "machineLearningServices.excerpt.json",
        "workspaceRP.excerpt.json",
    ]:
        path = os.path.join(HERE, name)
        if not os.path.exists(path):
            continue
        with open(path) as f:
            part = json.load(f)
        for k, v in part.items():
            if k in defs:
                sys.exit(f"{name}: definition {k} is defined twice")
            defs[k] = v
    return defs


def ref_name(ref):
    if ref.startswith(COMMON):
        return ref[len(COMMON):]
    if ref.startswith("#/definitions/"):
        return ref[len("#/definitions/"):]
    sys.exit(f"unknown $ref {ref}")


def bases(d):
    return [ref_name(a["$ref"]) for a in d.get("allOf", [])]


class Translator:
    def __init__(self, defs):
        self.defs = defs
        for name, d in defs.items():
            for b in bases(d):
                if b not in defs:
                    sys.exit(f"{name}: base {b} is not in the excerpts")
        # discriminated base -> [(value, child)]
        self.children = {}
        for name, d in defs.items():
            value = d.get("x-ms-discriminator-value")
            if value is None:
                continue
            for b in self.ancestors(name):
                if "discriminator" in self.defs[b]:
                    self.children.setdefault(b, []).append((value, name))

    def ancestors(self, name):
        out = []
        for b in bases(self.defs[name]):
            out.append(b)
            out.extend(self.ancestors(b))
        return out

    def discriminator_of(self, name):
        """(field, value) when `name` is a concrete child of a discriminated base."""
        value = self.defs[name].get("x-ms-discriminator-value")
        for b in self.ancestors(name):
            if "discriminator" in self.defs[b]:
                return self.defs[b]["discriminator"], value
        return None, None

    def prop(self, p):
        """One property schema: $ref, type/format, enum, pattern, items, additionalProperties."""
        nullable = p.get("x-nullable", False)
        if "$ref" in p:
            s = {"$ref": "#/$defs/" + ref_name(p["$ref"])}
        else:
            s = {}
            t = p.get("type")
            if t:
                s["type"] = t
            fmt = p.get("format")
            if fmt == "int32" and t == "integer":
                s.update(INT32)
            elif fmt in ("duration", "uuid", "date-time", "uri"):
                s["format"] = fmt
            for k in ("enum", "pattern", "minLength", "maxLength", "minimum", "maximum"):
                if k in p:
                    s[k] = p[k]
            if "items" in p:
                s["items"] = self.prop(p["items"])
            if isinstance(p.get("additionalProperties"), dict):
                s["additionalProperties"] = self.prop(p["additionalProperties"])
            if "properties" in p:
                s["properties"] = {k: self.prop(v) for k, v in p["properties"].items()}
        for k in ("readOnly", "x-ms-mutability", "default"):
            if k in p:
                s[k] = p[k]
        for k in p:
            if k.startswith("x-envbuild-"):
                # A $ref or items definition not copied: only the JSON type is checked.
                s[k] = p[k]
        if nullable:
            if "type" in s and "$ref" not in s:
                s["type"] = [s["type"], "null"]
                if "enum" in s:
                    s["enum"] = s["enum"] + [None]
            else:
                # `if null, else the definition`: null passes, anything else meets the
                # definition's own errors with their paths (an anyOf would hide them).
                s = {"if": {"type": "null"}, "else": s}
        return s

    def flat(self, name):
        """Own and inherited properties and required fields, bases first."""
        props, required = {}, []
        for b in bases(self.defs[name]):
            bp, br = self.flat(b)
            props.update(bp)
            required += [r for r in br if r not in required]
        d = self.defs[name]
        for k, v in d.get("properties", {}).items():
            props[k] = v
        required += [r for r in d.get("required", []) if r not in required]
        return props, required

    def schema(self, name):
        d = self.defs[name]
        if "enum" in d:
            return {"type": "string", "enum": d["enum"]}
        props, required = self.flat(name)
        s = {"type": "object"}
        if "discriminator" in d:
            # A polymorphic base: the discriminator picks the concrete definition.
            field = d["discriminator"]
            s["required"] = [field]
            s["properties"] = {field: self.prop(props[field])}
            s["allOf"] = [
                {
                    "if": {"properties": {field: {"const": value}}, "required": [field]},
                    "then": {"$ref": "#/$defs/" + child},
                }
                for value, child in sorted(self.children.get(name, []))
            ]
            s["x-openapi-discriminator"] = field
            return s
        out = {k: self.prop(v) for k, v in props.items()}
        field, value = self.discriminator_of(name)
        if field:
            out[field] = {"const": value}
            if field not in required:
                required.append(field)
        s["properties"] = out
        if required:
            s["required"] = required
        if d.get("additionalProperties") is False:
            s["additionalProperties"] = False
        return s

    def document(self):
        return {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": "https://envbuild.dev/azureml-2025-12-01.schema.json",
            "title": "Microsoft.MachineLearningServices 2025-12-01 (stable), the definitions envbuild uses",
            "description": "Generated by translate.py from the *.excerpt.json files; see README.md.",
            "$defs": {name: self.schema(name) for name in sorted(self.defs)},
        }


def main():
    doc = Translator(load()).document()
    out = os.path.join(HERE, "azureml.schema.json")
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, out)
    print(f"wrote {out}: {len(doc['$defs'])} definitions")


if __name__ == "__main__":
    main()
