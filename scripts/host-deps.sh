# Debian 12 packages the product and its test suite need (sourced by install.sh and test-env.sh).
# Runtime: libvirt + QEMU, nftables and its Python binding, libvirt's Python binding, TPM stack.
QWAMOS_RUNTIME_PKGS="
python3 python3-venv python3-pip
libvirt-daemon-system libvirt-clients qemu-system-x86 dnsmasq-base ipxe-qemu
nftables python3-nftables python3-libvirt
tpm2-tools libtss2-dev pkg-config build-essential python3-dev
iproute2 keyutils cryptsetup-bin
"
# Tests and benchmarks only: a software TPM, packet tools for the namespace
# tests, xmllint for virt-xml-validate in bench/bench_policy.py.
QWAMOS_TEST_PKGS="
swtpm swtpm-tools iputils-ping tcpdump make
libxml2-utils
"
