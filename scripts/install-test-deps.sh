#!/bin/sh
# Install what the test suite needs on Debian or Ubuntu, only what is missing:
# nginx, Apache httpd (apache2, for mod_proxy_fcgi) and cgi-fcgi (libfcgi-bin) as independent
# FastCGI peers, php-cgi, perl and python3
# for the example scripts (python3 with prometheus_client for the OpenMetrics check), a C
# compiler with a static libc for the compiled-CGI and chroot tests, groff to check that
# the manual pages render cleanly, resident FastCGI apps nobody here wrote (a Perl FCGI.pm
# loop from libfcgi-perl, a flup WSGI app from PyPI); then cargo-deb (from crates.io, with
# cargo) and dpkg-dev for the Debian package test.
set -eu

# cargo-deb is a cargo subcommand: cargo installs it for the user who runs the tests
# (never through sudo), in cargo's own bin directory.
cargo_bin="${CARGO_HOME:-${HOME:-}/.cargo}/bin"
install_cargo_deb() {
    if command -v cargo-deb >/dev/null 2>&1 || [ -x "$cargo_bin/cargo-deb" ]; then
        return 0
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        echo "cargo is not on PATH: install Rust (rustup) first; the tests need it too" >&2
        exit 1
    fi
    echo "installing: cargo-deb (cargo install, a few minutes)"
    cargo install --quiet --locked cargo-deb
}

need=""
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
have nginx    || need="$need nginx"
have apache2  || need="$need apache2"
have cgi-fcgi || need="$need libfcgi-bin"
have php-cgi  || need="$need php-cgi"
have perl     || need="$need perl"
have python3  || need="$need python3"
have cc       || need="$need gcc libc6-dev"
# The chroot test links a static binary: cc -static needs libc.a.
if have cc; then
    case "$(cc -print-file-name=libc.a)" in
        /*) ;;
        *) need="$need libc6-dev" ;;
    esac
fi
have groff    || need="$need groff-base"
# A fault test closes the master's epoll descriptor through gdb.
have gdb      || need="$need gdb"
# cargo-deb's Depends: $auto asks dpkg-shlibdeps.
have dpkg-shlibdeps || need="$need dpkg-dev"
# Resident-app interop (tests/resident.rs): a Perl FCGI.pm loop.
if ! have perl || ! perl -MFCGI -e 1 >/dev/null 2>&1; then need="$need libfcgi-perl"; fi
# Python packages: prometheus_client (the OpenMetrics tests cross-check with its strict
# parser) and flup (a resident WSGI app, tests/resident.rs). Whether pip may install is
# the python's own word, not its path: a python3 marked externally managed (PEP 668, as
# Debian's is, wherever PATH finds it) takes Debian's package where there is one and pip
# only with --break-system-packages (test machines are throwaway); any other python3
# (pyenv, a virtualenv) takes both from PyPI as the user.
externally_managed() {
    python3 -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")))' 2>/dev/null
}
pip_need=""
if ! have python3; then
    # Debian's python3 comes with the packages above: it is externally managed.
    need="$need python3-prometheus-client python3-pip"
    pip_need="flup"
else
    if ! python3 -c 'import prometheus_client' >/dev/null 2>&1; then
        if externally_managed; then
            need="$need python3-prometheus-client"
        else
            pip_need="prometheus_client"
        fi
    fi
    if ! python3 -c 'import flup.server.fcgi' >/dev/null 2>&1; then
        pip_need="$pip_need flup"
        python3 -m pip --version >/dev/null 2>&1 || need="$need python3-pip"
    fi
fi
pip_install() {
    [ -n "$pip_need" ] || return 0
    # The packages just installed bring Debian's python3; should they not have, the
    # tests that need these name what is missing.
    if ! have python3; then
        echo "no python3 after the install: not installing$pip_need" >&2
        return 0
    fi
    echo "installing from PyPI:$pip_need"
    # shellcheck disable=SC2086
    if externally_managed; then
        $SUDO python3 -m pip install -q $pip_need 2>/dev/null ||
            $SUDO python3 -m pip install -q --break-system-packages $pip_need
    else
        # --user where it works; a virtualenv refuses --user and takes a plain install.
        python3 -m pip install -q --user $pip_need 2>/dev/null ||
            python3 -m pip install -q $pip_need
    fi
}

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
if [ -z "$need" ]; then
    echo "test dependencies: all packages present"
    pip_install
    install_cargo_deb
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "missing:$need; this script knows only apt-get (Debian/Ubuntu); install them by hand" >&2
    exit 1
fi
if [ -n "$SUDO" ] && ! command -v sudo >/dev/null 2>&1; then
    echo "need root or sudo to install:$need" >&2
    exit 1
fi
echo "installing:$need"
# Keep package scripts from starting a system nginx or php service on public ports: the
# tests start their own, on unix sockets and loopback only.
# CGI_FPM_POLICY_RC_D moves it for the installer's own test (tests/installer.rs).
policy=${CGI_FPM_POLICY_RC_D:-/usr/sbin/policy-rc.d}
created_policy=""
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod 755 "$policy"
    created_policy=yes
fi
# An EXIT trap's last status becomes the script's: it must end in 0 when there is
# nothing to remove, or a first run that installed everything still "fails".
cleanup() {
    if [ -n "$created_policy" ]; then $SUDO rm -f "$policy"; fi
}
trap cleanup EXIT
$SUDO apt-get update -qq
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $need >/dev/null
pip_install
echo "test dependencies installed"
install_cargo_deb
