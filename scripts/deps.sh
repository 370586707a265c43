# Sourced by the scripts: installs the Debian 12 packages engram needs when they are missing.
# Needs root (or sudo) only when something is missing.

ENGRAM_DEBIAN_PACKAGES=(cmake make g++ pkg-config libeigen3-dev libxxhash-dev catch2 libbenchmark-dev
                        nlohmann-json3-dev libutf8proc-dev libdnnl-dev libopenmpi-dev openmpi-bin)

engram_install_deps() {
    local missing=()
    for p in "${ENGRAM_DEBIAN_PACKAGES[@]}" "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "engram: installing missing Debian packages: ${missing[*]}"
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || { echo "engram: need root or sudo to install ${missing[*]}" >&2; return 1; }
        sudo="sudo"
    fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

engram_jobs() { nproc 2>/dev/null || echo 2; }
