"""Patch the vendored github.com/modern-go/reflect2 v1.0.1 the way v1.0.2 fixed it.

Go 1.18 changed reflect.mapiterinit to take the iterator as a third argument; the old
two-argument linkname corrupts memory at run time.
"""
import pathlib
import re
import sys

d = pathlib.Path(sys.argv[1])


def patch(name, old, new, regex=False):
    f = d / name
    s = f.read_text()
    s2 = re.sub(old, new, s, count=1, flags=re.S) if regex else s.replace(old, new, 1)
    if s2 == s:
        sys.exit(f"reflect2 patch: pattern not found in {name}")
    f.write_text(s2)


patch(
    "unsafe_link.go",
    "func mapiterinit(rtype unsafe.Pointer, m unsafe.Pointer) *hiter",
    "func mapiterinit(rtype unsafe.Pointer, m unsafe.Pointer, it *hiter)",
)
# The caller now owns the iterator, so it must have the runtime's full size.
patch(
    "unsafe_link.go",
    r"type hiter struct \{.*?\n\}",
    """type hiter struct {
	key         unsafe.Pointer
	value       unsafe.Pointer
	t           unsafe.Pointer
	h           unsafe.Pointer
	buckets     unsafe.Pointer
	bptr        unsafe.Pointer
	overflow    *[]unsafe.Pointer
	oldoverflow *[]unsafe.Pointer
	startBucket uintptr
	offset      uint8
	wrapped     bool
	B           uint8
	i           uint8
	bucket      uintptr
	checkBucket uintptr
}""",
    regex=True,
)
patch(
    "unsafe_map.go",
    """	return &UnsafeMapIterator{
		hiter:      mapiterinit(type2.rtype, *(*unsafe.Pointer)(obj)),""",
    """	var it hiter
	mapiterinit(type2.rtype, *(*unsafe.Pointer)(obj), &it)
	return &UnsafeMapIterator{
		hiter:      &it,""",
)
