#!/usr/bin/env python3
"""Counts heap allocations in a callgrind output file: calls into the allocator's entry
points (mimalloc's mi_* and the C library's malloc family) made from outside the
allocator, so one allocation counts once however the allocator is built inside.
Usage: cg_allocs.py FILE.cg  -> prints the number of allocations (incl. reallocs)."""
import re, sys

ENTRY = re.compile(
    r"^(mi_(malloc|zalloc|calloc|realloc|rezalloc|recalloc|mallocn|reallocn|reallocf)"
    r"(_aligned|_aligned_at|_small)?|mi_new\w*|malloc|calloc|realloc|posix_memalign|"
    r"aligned_alloc|memalign|valloc)$"
)
INSIDE = re.compile(r"^(mi_|_mi_|malloc|calloc|realloc|posix_memalign|aligned_alloc|memalign|valloc|__libc_|_int_|tcache)")

names = {}
def name(field):
    m = re.match(r"\((\d+)\)(?: (.*))?$", field)
    if not m:
        return field
    ident, text = m.groups()
    if text is not None:
        names[ident] = text
    return names.get(ident, "")

total = 0
caller = ""
callee = None
with open(sys.argv[1], errors="replace") as f:
    for line in f:
        if line.startswith("fn="):
            caller = name(line[3:].rstrip("\n"))
            callee = None
        elif line.startswith("cfn="):
            callee = name(line[4:].rstrip("\n"))
        elif line.startswith("calls=") and callee is not None:
            if ENTRY.match(callee) and not INSIDE.match(caller):
                total += int(line[6:].split()[0])
            callee = None
print(total)
