"""Patch the vendored k8s.io/kube-openapi validator the way kube-openapi#230 fixed it
(Kubernetes 1.21's fix for kubernetes#99804).

Its type validator took a value for null when
`reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data)), reflect.ValueOf(data))`, which compares
two reflect.Value headers rather than the values they hold. Before Go 1.16 that was never true.
Since Go 1.16 reflect.Zero points at the runtime's shared zero buffer, and so does an empty
string boxed in an interface, so a "" where the schema says `type: string` is refused with
`must be of type string: "null"`. Only a nil value is null.

Idempotent: a file that is already patched is left as it is.
"""
import pathlib
import sys

f = pathlib.Path(sys.argv[1]) / "type.go"
HEAD = "func (t *typeValidator) Validate(data interface{}) *Result {\n\tresult := new(Result)\n\tresult.Inc()\n"
OLD = HEAD + "\tif data == nil || reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data)), reflect.ValueOf(data)) {\n"
NEW = HEAD + "\tif data == nil {\n"

if not f.is_file():
    sys.exit(f"kube-openapi patch: {f} not found")
s = f.read_text()
if s.count(OLD) == 1:
    f.write_text(s.replace(OLD, NEW))
elif OLD in s or NEW not in s:
    sys.exit(f"kube-openapi patch: the zero-value check of typeValidator.Validate not found in {f}")
