#!/usr/bin/env bash
# Security scans: bandit (static analysis of the application code, config in pyproject.toml
# [tool.bandit]) and pip-audit (known vulnerabilities in the pinned requirements).
#
#   scripts/security_scan.sh               both scans
#   scripts/security_scan.sh bandit        one of them
#   scripts/security_scan.sh pip-audit
#
# VENV (default .venv) is the virtualenv whose bandit and pip-audit run. Exit status: 0 clean,
# 1 findings (a bandit issue or a vulnerable dependency), 2 a scan could not run. If pip-audit's
# advisory source (PyPI's JSON API) cannot be reached, the audit prints
# "skipped: advisory source unreachable" and does not fail the run.
# PIP_AUDIT_REPORT=<file> evaluates a saved "pip-audit -f json" report instead of running pip-audit.
set -uo pipefail

cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
BANDIT_TARGETS=(aegis_site registry tasks broker notify ops aegis_agent)
scans=("$@")
[ ${#scans[@]} -eq 0 ] && scans=(bandit pip-audit)
status=0

fail() {  # keep the worst status: 2 (could not run) over 1 (findings)
    [ "$1" -gt "$status" ] && status=$1
}

run_bandit() {
    echo "== bandit: ${BANDIT_TARGETS[*]}"
    if [ ! -x "$VENV/bin/bandit" ]; then
        echo "bandit not found in $VENV (pip install -r requirements-dev.txt)" >&2
        fail 2
        return
    fi
    # Bandit warns about "nosec encountered but no failed test" for every part of a
    # justified f-string; that noise is dropped, everything else on stderr is kept.
    "$VENV/bin/bandit" -c pyproject.toml -r -q "${BANDIT_TARGETS[@]}" 2> >(grep -v "nosec encountered" >&2)
    local rc=$?
    case $rc in
        0) echo "bandit: no issues" ;;
        1) echo "bandit: issues found" >&2; fail 1 ;;
        *) echo "bandit: failed to run (exit $rc)" >&2; fail 2 ;;
    esac
}

run_pip_audit() {
    echo "== pip-audit: requirements.txt requirements-dev.txt"
    local report errors rc=0
    errors=$(mktemp)
    if [ -n "${PIP_AUDIT_REPORT:-}" ]; then
        report=$PIP_AUDIT_REPORT
    else
        if [ ! -x "$VENV/bin/pip-audit" ]; then
            echo "pip-audit not found in $VENV (pip install -r requirements-dev.txt)" >&2
            rm -f "$errors"
            fail 2
            return
        fi
        report=$(mktemp)
        "$VENV/bin/pip-audit" -r requirements.txt -r requirements-dev.txt --progress-spinner off \
            -f json -o "$report" 2>"$errors"
        rc=$?
    fi
    "$VENV/bin/python" - "$report" "$errors" "$rc" <<'PY'
"""Judge a pip-audit JSON report: vulnerabilities fail, an unreachable advisory source skips."""
import json
import re
import sys

report_path, errors_path, rc = sys.argv[1], sys.argv[2], int(sys.argv[3])
errors = open(errors_path).read()
UNREACHABLE = re.compile(
    r"ConnectionError|ConnectTimeout|ReadTimeout|Max retries exceeded|Failed to establish|"
    r"Name or service not known|Temporary failure in name resolution|Network is unreachable|"
    r"SSLError|ProxyError|HTTP error 5\d\d|Service Unavailable",
    re.IGNORECASE,
)
try:
    with open(report_path) as f:
        report = json.load(f)
except (OSError, ValueError):
    report = None

if report is None:
    if UNREACHABLE.search(errors):
        print("pip-audit: skipped: advisory source unreachable")
        print(errors.strip().splitlines()[-1] if errors.strip() else "", file=sys.stderr)
        sys.exit(0)
    print(f"pip-audit: failed to run (exit {rc})\n{errors}", file=sys.stderr)
    sys.exit(2)

dependencies = report.get("dependencies", [])
vulnerable = [d for d in dependencies if d.get("vulns")]
skipped = [d for d in dependencies if "skip_reason" in d]
audited = len(dependencies) - len(skipped)

for dep in vulnerable:
    for vuln in dep["vulns"]:
        fixes = ", ".join(vuln.get("fix_versions") or []) or "no fixed version"
        aliases = ", ".join(vuln.get("aliases") or [])
        print(f"VULNERABLE {dep['name']} {dep.get('version')}: {vuln['id']}"
              f"{f' ({aliases})' if aliases else ''}; fixed in: {fixes}")
if vulnerable:
    print(f"pip-audit: {len(vulnerable)} vulnerable dependencies", file=sys.stderr)
    sys.exit(1)
if dependencies and audited == 0:
    # PyPI answered with nothing for every pinned version (e.g. a mirror or proxy that does
    # not serve /pypi/<name>/<version>/json): nothing was audited, which is not "clean".
    print("pip-audit: skipped: advisory source unreachable "
          f"(none of {len(dependencies)} dependencies could be looked up: {skipped[0]['skip_reason']})")
    sys.exit(0)
if UNREACHABLE.search(errors) and not dependencies:
    print("pip-audit: skipped: advisory source unreachable")
    sys.exit(0)
for dep in skipped:
    print(f"not audited: {dep['name']}: {dep['skip_reason']}")
if rc not in (0, 1):
    print(f"pip-audit: failed to run (exit {rc})\n{errors}", file=sys.stderr)
    sys.exit(2)
print(f"pip-audit: {audited} dependencies audited, no known vulnerabilities")
PY
    local verdict=$?
    [ -z "${PIP_AUDIT_REPORT:-}" ] && rm -f "$report"
    rm -f "$errors"
    [ $verdict -ne 0 ] && fail $verdict
}

for scan in "${scans[@]}"; do
    case $scan in
        bandit) run_bandit ;;
        pip-audit) run_pip_audit ;;
        *) echo "unknown scan: $scan (bandit, pip-audit)" >&2; exit 2 ;;
    esac
done
exit $status
