# Shared by scripts/demo and scripts/test: make .venv and install procqueue
# with the given extra, re-installing only when pyproject.toml changed.
ensure_venv() {
    local extra="$1"
    local python="${PYTHON:-python3}"
    if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        echo "procqueue needs Python 3.11 or newer as '$python' (set PYTHON=...)" >&2
        exit 1
    fi
    if [ ! -x .venv/bin/python ]; then
        if ! "$python" -m venv .venv 2>/dev/null; then
            rm -rf .venv
            if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
                echo "installing python3-venv (Debian/Ubuntu)" >&2
                apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
                "$python" -m venv .venv
            else
                echo "cannot create a virtualenv: install python3-venv (sudo apt-get install python3-venv)" >&2
                exit 1
            fi
        fi
    fi
    local stamp=".venv/.installed-$extra"
    local wanted
    wanted="$(sha256sum pyproject.toml | cut -c1-16)"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
        .venv/bin/python -m pip install -q --upgrade pip >/dev/null
        .venv/bin/python -m pip install -q -e ".[$extra]"
        echo "$wanted" > "$stamp"
    fi
}
