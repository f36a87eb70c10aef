#!/usr/bin/env python3
"""Module dependency graph of the envbuild crate, and a check that it has no import cycle.

Run: python3 scripts/modgraph.py [SRC_DIR] [--dot]    (SRC_DIR: default builder/src of this repo)
Prints the top-level graph (`module -> deps`), then `ok: no import cycle` or each cycle with one
`file:line` per edge; exit 1 on a cycle or a cli violation, else 0. --dot prints Graphviz instead
(the verdict then goes to stderr). Plain python3 (3.11), standard library only.

Modules: follows `mod x;` from lib.rs (the library) and main.rs (the binary, named `bin::...`);
a file no `mod` reaches is placed by its path (`foo.rs`, `foo/mod.rs` -> foo; `foo/bar.rs` ->
foo::bar) and noted on stderr, as is a `crate::x` naming no module. References: `use` trees
(nested groups, several lines), `crate::`/`self::`/`super::` paths anywhere, `envbuild::` in the
binary, and `name::..` where `name` was imported by `use`; each counts for the longest prefix that
is a module. Checked: cycles between the top-level modules, between siblings in every folder, and
between the binary's modules; a `cli` module may import only `cli::args`, `cli::ui` and cli's mod.rs.
Ignored on purpose: comments, string and char literals; `#[cfg(test)]`/`#[test]` items (tests may
reach anywhere); edges to a module itself or to the crate root; and, between siblings, edges to or
from the folder's own mod.rs (a parent re-exporting its children, and children using the parent's
shared types, is normal layering). Not seen: paths that macros build, names reached by `use x::*`.
"""

import argparse
import os
import re
import sys
from collections import defaultdict, deque

CLI, CLI_SHARED = "cli", ("args", "ui")  # bin::cli::* may import only these and bin::cli (mod.rs)
LIB_NAME = "envbuild"  # how the binary names the library

IDENT = re.compile(r"r#[A-Za-z_]\w*|[^\W\d]\w*")
RAW_STR = re.compile(r'[bc]?r(#*)"')
STR = re.compile(r'[bc]?"')
NUM = re.compile(r"\d\w*")


# ---------------------------------------------------------------- lexing

def lex(s):
    """Tokens (kind, value, line) of Rust source; kinds: id, lit, life, num, p (punctuation)."""
    toks, i, n, line = [], 0, len(s), 1
    while i < n:
        c = s[i]
        if c == "\n":
            line += 1
            i += 1
        elif c.isspace():
            i += 1
        elif s.startswith("//", i):
            j = s.find("\n", i)
            i = n if j < 0 else j
        elif s.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if s.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif s.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    line += s[i] == "\n"
                    i += 1
        elif (m := RAW_STR.match(s, i)):
            end = s.find('"' + m.group(1), m.end())
            end = n if end < 0 else end + 1 + len(m.group(1))
            toks.append(("lit", s[m.end():end - 1 - len(m.group(1))], line))
            line += s.count("\n", i, end)
            i = end
        elif (m := STR.match(s, i)):
            j = m.end()
            while j < n and s[j] != '"':
                j += 2 if s[j] == "\\" else 1
            toks.append(("lit", s[m.end():j], line))
            line += s.count("\n", i, j)
            i = j + 1
        elif c == "'" or (c == "b" and s.startswith("'", i + 1)):
            k = i + (c == "b")
            if s.startswith("\\", k + 1):  # '\n', '\'', '\u{..}'
                j = s.find("'", k + 3)
                i = n if j < 0 else j + 1
                toks.append(("lit", "", line))
            elif k + 2 < n and s[k + 2] == "'":  # 'x', '{'
                i = k + 3
                toks.append(("lit", "", line))
            elif (m := IDENT.match(s, k + 1)):  # lifetime or label
                toks.append(("life", m.group(), line))
                i = m.end()
            else:
                toks.append(("p", c, line))
                i += 1
        elif (m := IDENT.match(s, i)):
            v = m.group()
            toks.append(("id", v[2:] if v.startswith("r#") else v, line))
            i = m.end()
        elif c.isdigit():
            m = NUM.match(s, i)
            toks.append(("num", m.group(), line))
            i = m.end()
        elif s.startswith("::", i):
            toks.append(("p", "::", line))
            i += 2
        else:
            toks.append(("p", c, line))
            i += 1
    return toks


def is_p(t, v):
    return t[0] == "p" and t[1] == v


def match_close(toks, i):
    """Index just past the bracket group that opens at toks[i]."""
    pairs = {"(": ")", "[": "]", "{": "}"}
    depth = 0
    for j in range(i, len(toks)):
        if toks[j][0] == "p":
            if toks[j][1] in pairs:
                depth += 1
            elif toks[j][1] in ")]}":
                depth -= 1
                if depth == 0:
                    return j + 1
    return len(toks)


def is_test_attr(attr):
    """attr: the tokens between `#[` and `]`. True for #[test] and cfg's that need `test`."""
    ids = [t[1] for t in attr if t[0] == "id"]
    if ids and ids[-1] == "test" and all(t[0] == "id" or is_p(t, "::") for t in attr):
        return True  # #[test], #[tokio::test]
    return bool(ids) and ids[0] == "cfg" and "test" in ids and "not" not in ids


def drop_test_items(toks):
    """The tokens without #[cfg(test)] / #[test] items; also the names of test-only `mod x;`
    declarations, and whether the whole file is test-only (#![cfg(test)])."""
    out, test_mods, i = [], [], 0
    while i < len(toks):
        t = toks[i]
        inner = i + 2 < len(toks) and is_p(toks[i + 1], "!") and is_p(toks[i + 2], "[")
        if is_p(t, "#") and (inner or (i + 1 < len(toks) and is_p(toks[i + 1], "["))):
            open_ = i + 2 if inner else i + 1
            end = match_close(toks, open_)
            if not is_test_attr(toks[open_ + 1:end - 1]):
                out.extend(toks[i:end])
                i = end
                continue
            if inner:
                return [], [], True
            j = end
            while j + 1 < len(toks) and is_p(toks[j], "#") and is_p(toks[j + 1], "["):
                j = match_close(toks, j + 1)
            k = j
            while k < len(toks) and toks[k][0] == "id" and toks[k][1] in ("pub", "crate"):
                k += 1
                if k < len(toks) and is_p(toks[k], "("):
                    k = match_close(toks, k)
            if (k + 2 < len(toks) and toks[k][1] == "mod" and toks[k + 1][0] == "id"
                    and is_p(toks[k + 2], ";")):
                test_mods.append(toks[k + 1][1])
            while j < len(toks):  # skip the item: to `;` or past the first {...} at depth 0
                if toks[j][0] == "p" and toks[j][1] in "([{":
                    brace = toks[j][1] == "{"
                    j = match_close(toks, j)
                    if brace:
                        break
                elif is_p(toks[j], ";") or is_p(toks[j], "}"):
                    j += is_p(toks[j], ";")
                    break
                else:
                    j += 1
            i = j
            continue
        out.append(t)
        i += 1
    return out, test_mods, False


# ---------------------------------------------------------------- parsing one file

PATH_HEADS = ("crate", "self", "super", "$crate")


def parse_use(toks, i, leaves):
    """Parse the use tree at toks[i]; append (segments, line); return index of the `;`."""
    def tree(i, prefix):
        segs = list(prefix)
        line = None
        if i < len(toks) and is_p(toks[i], "::"):
            i += 1
        while i < len(toks):
            t = toks[i]
            if t[0] == "id" and t[1] != "as":
                if line is None:
                    line = t[2]
                if not (t[1] == "self" and prefix and len(segs) == len(prefix)):
                    segs.append(t[1])
                i += 1
                if i < len(toks) and is_p(toks[i], "::"):
                    i += 1
                    continue
                alias = segs[-1] if segs else None
                if i + 1 < len(toks) and toks[i][1] == "as":
                    alias = toks[i + 1][1]
                    i += 2
                leaves.append((segs, line, alias))
                return i
            if is_p(t, "{"):
                i += 1
                while i < len(toks) and not is_p(toks[i], "}"):
                    i = tree(i, segs)
                    if i < len(toks) and is_p(toks[i], ","):
                        i += 1
                    elif i < len(toks) and not is_p(toks[i], "}"):
                        i += 1  # unexpected token: step over it
                return i + 1
            if is_p(t, "*"):
                leaves.append((segs, t[2], None))
                return i + 1
            return i  # `;` or something unexpected
        return i

    i = tree(i, [])
    while i < len(toks) and not is_p(toks[i], ";"):
        i += 1
    return i


def parse_file(path):
    """Refs (segments, inline module path, line, macro?), mod declarations, test-only mod names."""
    with open(path, encoding="utf-8", errors="replace") as f:
        toks, test_mods, test_only = drop_test_items(lex(f.read()))
    refs, decls, macros, aliases = [], [], set(), {}
    inline = []  # [(name, depth)] of inline `mod x { ... }` we are in
    depth, pending_path = 0, None
    i = 0
    while i < len(toks):
        kind, v, line = toks[i]
        nxt = toks[i + 1] if i + 1 < len(toks) else ("", "", 0)
        prev = toks[i - 1] if i else ("", "", 0)
        if kind == "p":
            if v == "{":
                depth += 1
            elif v == "}":
                depth -= 1
                if inline and inline[-1][1] == depth:
                    inline.pop()
            elif (v == "#" and is_p(nxt, "[") and i + 5 < len(toks) and toks[i + 2][1] == "path"
                  and is_p(toks[i + 3], "=") and toks[i + 4][0] == "lit"):
                pending_path = toks[i + 4][1]
            i += 1
            continue
        if kind != "id":
            i += 1
            continue
        if v == "mod" and nxt[0] == "id" and i + 2 < len(toks):
            after = toks[i + 2]
            if is_p(after, ";"):
                decls.append((nxt[1], [n for n, _ in inline], pending_path, line))
                pending_path = None
                i += 3
                continue
            if is_p(after, "{"):
                inline.append((nxt[1], depth))
                pending_path = None
                i += 2
                continue
        if v == "macro_rules" and is_p(nxt, "!") and i + 2 < len(toks):
            macros.add(toks[i + 2][1])
        if v == "use" and not is_p(prev, "::"):
            leaves = []
            j = parse_use(toks, i + 1, leaves)
            for segs, ln, alias in leaves:
                if segs:
                    refs.append((segs, [n for n, _ in inline], ln, False))
                    if alias and alias not in ("_", "self"):
                        aliases[alias] = (segs, [n for n, _ in inline])
            i = j + 1
            continue
        if is_p(nxt, "::") and not is_p(prev, "::") and not is_p(prev, "."):
            segs, j = [v], i + 1
            while j + 1 < len(toks) and is_p(toks[j], "::") and toks[j + 1][0] == "id":
                segs.append(toks[j + 1][1])
                j += 2
            if len(segs) > 1:
                if is_p(prev, "$") and v == "crate":
                    segs[0] = "$crate"
                macro = j < len(toks) and is_p(toks[j], "!")
                refs.append((segs, [n for n, _ in inline], line, macro))
            i = j
            continue
        i += 1
    return {"refs": refs, "decls": decls, "test_mods": test_mods, "test_only": test_only,
            "macros": macros, "aliases": aliases,
            "items": {b[1] for a, b in zip(toks, toks[1:]) if a[0] == "id" and b[0] == "id"
                      and a[1] in ("fn", "static", "const", "struct", "enum", "type", "trait")}}


# ---------------------------------------------------------------- the crate's modules

def is_mod_rs(path, roots):
    return os.path.basename(path) == "mod.rs" or path in roots


def child_dir(path, roots):
    d = os.path.dirname(path)
    return d if is_mod_rs(path, roots) else os.path.join(d, os.path.splitext(os.path.basename(path))[0])


def layout_path(rel):
    parts = rel[:-3].split(os.sep)
    if parts[-1] == "mod":
        parts.pop()
    return tuple(parts)


class Crate:
    def __init__(self, src):
        self.src = src
        self.parsed = {}
        self.file_mod = {}  # file -> (crate, path); crate is "lib" or "bin"
        self.excluded = set()  # test-only files
        self.notes, self.missing = [], []
        lib, main = os.path.join(src, "lib.rs"), os.path.join(src, "main.rs")
        self.roots = {p for p in (lib, main) if os.path.exists(p)}
        for root, crate in ((main, "bin"), (lib, "lib")):
            if os.path.exists(root):
                self.walk(root, crate, ())
        if self.missing:
            self.notes.append("declared but no file: " + ", ".join(self.missing))
        self.place_by_layout()
        self.modules = set(self.file_mod.values())
        self.module_file = {}
        for f, m in sorted(self.file_mod.items()):
            self.module_file.setdefault(m, f)

    def parse(self, f):
        if f not in self.parsed:
            self.parsed[f] = parse_file(f)
        return self.parsed[f]

    def walk(self, f, crate, path):
        if f in self.file_mod or f in self.excluded:
            return
        p = self.parse(f)
        if p["test_only"]:
            self.excluded.add(f)
            return
        self.file_mod[f] = (crate, path)
        cdir = child_dir(f, self.roots)
        for name in p["test_mods"]:
            for c in (os.path.join(cdir, name + ".rs"), os.path.join(cdir, name, "mod.rs")):
                self.excluded.add(c)
        for name, inline, path_attr, line in p["decls"]:
            if path_attr and not inline:
                cands = [os.path.normpath(os.path.join(os.path.dirname(f), path_attr))]
            else:
                d = os.path.join(cdir, *inline)
                cands = [os.path.join(d, name + ".rs"), os.path.join(d, name, "mod.rs")]
            found = next((c for c in cands if os.path.isfile(c)), None)
            if found is None:
                self.missing.append(f"mod {name} ({show(f)}:{line})")
            else:
                self.walk(found, crate, path + tuple(inline) + (name,))

    def place_by_layout(self):
        """Files no `mod` reached (e.g. halfway through a move) go where their path says."""
        bin_dirs = {}  # layout path of a binary module -> its module path
        for f, (crate, path) in self.file_mod.items():
            if crate == "bin" and f not in self.roots:
                bin_dirs[layout_path(os.path.relpath(f, self.src))] = path
        stray = []
        for dirpath, dirnames, filenames in os.walk(self.src):
            dirnames.sort()
            for fn in sorted(filenames):
                f = os.path.join(dirpath, fn)
                if not fn.endswith(".rs") or f in self.file_mod or f in self.excluded or f in self.roots:
                    continue
                rel = os.path.relpath(f, self.src)
                if rel.split(os.sep)[0] == "bin":
                    self.notes.append(f"{show(f)}: src/bin/ targets are not analysed")
                    continue
                if self.parse(f)["test_only"]:
                    continue
                lp = layout_path(rel)
                home = ("lib", lp)
                for k in range(len(lp) - 1, 0, -1):
                    if lp[:k] in bin_dirs:
                        home = ("bin", bin_dirs[lp[:k]] + lp[k:])
                        break
                self.file_mod[f] = home
                stray.append(rel)
        if stray:
            self.notes.append("not declared by any `mod`, placed by file layout: " + ", ".join(stray))

    def resolve(self, crate, cur, segs, aliases=None, depth=0):
        """(crate, module path) that a reference from module `cur` names, or None (external),
        and the first name after the crate root when that is no module (else None)."""
        head = segs[0]
        if head in ("crate", "$crate"):
            base, rest = (), segs[1:]
        elif head == LIB_NAME and crate == "bin":
            crate, base, rest = "lib", (), segs[1:]
        elif head in ("self", "super"):
            base, k = tuple(cur), 0
            while k < len(segs) and segs[k] in ("self", "super"):
                if segs[k] == "super":
                    if not base:
                        return None, None
                    base = base[:-1]
                k += 1
            rest = segs[k:]
        elif (crate, tuple(cur) + (head,)) in self.modules:  # a child module, named bare
            base, rest = tuple(cur), segs
        elif aliases and head in aliases and depth < 4 and len(segs) > 1:  # `use a::b; b::c`
            target = aliases[head][0]
            if target[0] == head:
                return None, None
            return self.resolve(crate, cur, list(target) + segs[1:], aliases, depth + 1)
        else:
            return None, None
        full = base + tuple(rest)
        for k in range(len(full), -1, -1):
            if (crate, full[:k]) in self.modules:
                return (crate, full[:k]), (full[0] if k == 0 and full else None)
        return (crate, ()), None

    def edges(self):
        """[(from module, to module, file, line)], and {unresolved crate-root path: (file, line)}."""
        out, unresolved = [], {}
        macros = set().union(*(p["macros"] for p in self.parsed.values()))
        root_items = {"lib": set(), "bin": set()}
        for f in self.roots:
            if f in self.file_mod:
                p = self.parse(f)
                root_items[self.file_mod[f][0]] |= p["items"] | set(p["aliases"])
        for f, mod in sorted(self.file_mod.items()):
            crate, path = mod
            p = self.parse(f)
            for segs, inline, line, macro in p["refs"]:
                dst, un = self.resolve(crate, path + tuple(inline), segs, p["aliases"])
                if dst is None:
                    continue
                if (un and not macro and un[0].islower() and un not in macros
                        and un not in root_items[dst[0]]):
                    head = LIB_NAME if crate == "bin" and dst[0] == "lib" else "crate"
                    unresolved.setdefault(f"{head}::{un}", (f, line))
                if dst != mod:
                    out.append((mod, dst, f, line))
        return out, unresolved


# ---------------------------------------------------------------- graphs

def name(m):
    crate, path = m
    if crate == "bin":
        return "::".join(("bin",) + path)
    return "::".join(path) or "crate"


def show(f):
    rel = os.path.relpath(f)
    return f if rel.startswith("..") else rel


def collapse(edges, crate, folder):
    """Edges between the children of `folder` in `crate`: {(a, b): (file, line)}."""
    n, out = len(folder), {}
    for (ca, pa), (cb, pb), f, line in edges:
        if ca != crate or cb != crate or len(pa) <= n or len(pb) <= n:
            continue
        if pa[:n] != folder or pb[:n] != folder or pa[n] == pb[n]:
            continue
        key = ((crate, folder + (pa[n],)), (crate, folder + (pb[n],)))
        if key not in out or (f, line) < out[key]:
            out[key] = (f, line)
    return out


def sccs(nodes, adj):
    """Tarjan's strongly connected components."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(adj[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(comp)

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def cycles(graph):
    """Short cycles covering every edge of every strongly connected component."""
    adj = defaultdict(set)
    for a, b in graph:
        adj[a].add(b)
    nodes = set(adj) | {b for _, b in graph}
    found = []
    for comp in sccs(nodes, adj):
        if len(comp) < 2:
            continue
        cs = set(comp)
        for u in sorted(comp):
            for v in sorted(adj[u] & cs):
                prev, q = {v: None}, deque([v])  # shortest path v -> u
                while q and u not in prev:
                    x = q.popleft()
                    for y in sorted(adj[x] & cs):
                        if y not in prev:
                            prev[y] = x
                            q.append(y)
                path, x = [], u
                while x is not None:
                    path.append(x)
                    x = prev[x]
                cyc = [u] + path[::-1][:-1]  # u -> v -> ... (back to u)
                k = cyc.index(min(cyc))
                cyc = cyc[k:] + cyc[:k]
                if cyc not in found:
                    found.append(cyc)
    return sorted(found, key=lambda c: (len(c), c))


def top_graph(edges):
    """Top-level modules of the library and the binary: {node: set(deps)}, {(a, b): (file, line)}."""
    g, where = defaultdict(set), {}
    for (ca, pa), (cb, pb), f, line in edges:
        if not pa or not pb:
            continue
        a, b = (ca, pa[:1]), (cb, pb[:1])
        g[a]
        g[b]
        if a != b:
            g[a].add(b)
            if (a, b) not in where or (f, line) < where[(a, b)]:
                where[(a, b)] = (f, line)
    return g, where


def main():
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description="Module graph and import-cycle check of the envbuild crate.")
    ap.add_argument("src", nargs="?", default=os.path.join(repo, "builder", "src"),
                    help="the crate's src folder (default: builder/src of this repo)")
    ap.add_argument("--dot", action="store_true", help="print the top-level graph as Graphviz")
    args = ap.parse_args()
    src = os.path.abspath(args.src if os.path.isabs(args.src) or os.path.exists(args.src)
                          else os.path.join(repo, args.src))
    if not os.path.isdir(src):
        ap.error(f"no such folder: {args.src}")

    crate = Crate(src)
    edges, unresolved = crate.edges()

    # Cycles: between the children of every module that has children (the crate roots included).
    problems, bad = [], set()
    folders = {(c, p[:k]) for c, p in crate.modules for k in range(len(p))}
    for c, folder in sorted(folders, key=lambda x: (x[0] == "bin", len(x[1]), x[1])):
        level = collapse(edges, c, folder)
        for cyc in cycles(level):
            ring = cyc + cyc[:1]
            lines = ["cycle: " + " -> ".join(name(m) for m in ring)]
            for a, b in zip(ring, ring[1:]):
                f, ln = level[(a, b)]
                lines.append(f"    {name(a)} -> {name(b)}  {show(f)}:{ln}")
                if not folder:
                    bad.add((a, b))
            problems.append(lines)
    n_cycles = len(problems)

    # The binary's cli modules: siblings may import cli::args and cli's mod.rs only.
    for (a, b), (f, ln) in sorted(collapse(edges, "bin", (CLI,)).items()):
        if b[1][-1] not in CLI_SHARED:
            shared = " and ".join(f"{CLI}::{m}" for m in CLI_SHARED)
            problems.append([f"violation: {name(a)} -> {name(b)}  {show(f)}:{ln}  "
                             f"(cli modules may import only {shared} and {CLI}'s mod.rs)"])

    g, where = top_graph(edges)
    order = sorted(g, key=lambda m: (m[0] == "bin", m[1]))
    if args.dot:
        print("digraph envbuild {\n  rankdir=LR;\n  node [shape=box, fontsize=10];")
        for m in order:
            print(f'  "{name(m)}"' + (" [style=filled, fillcolor=lightgrey]" if m[0] == "bin" else "") + ";")
        for m in order:
            for d in sorted(g[m], key=lambda x: (x[0] == "bin", x[1])):
                attr = " [color=red]" if (m, d) in bad else ""
                f, ln = where[(m, d)]
                print(f'  "{name(m)}" -> "{name(d)}"{attr}; // {show(f)}:{ln}')
        print("}")
        report = sys.stderr
    else:
        for m in order:
            deps = sorted(g[m], key=lambda x: (x[0] == "bin", x[1]))
            print(f"{name(m)} -> " + (", ".join(name(d) for d in deps) or "(none)"))
        print()
        report = sys.stdout
    if n_cycles == 0:
        print("ok: no import cycle", file=report)
    for lines in problems:
        print("\n".join(lines), file=report)
    report.flush()
    for note in crate.notes:
        print(f"note: {note}", file=sys.stderr)
    if unresolved:
        print("warning: no such module: " + ", ".join(
            f"{k} ({show(f)}:{ln})" for k, (f, ln) in sorted(unresolved.items())), file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
