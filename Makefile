# qwamos-hooks: the two commands (run as root on Debian 12)
#   make demo   install everything and run the hook on real VMs under the built-in policy
#   make test   install everything, start the services, run the whole test suite

VENV ?= /opt/qwamos/venv
PY    = $(VENV)/bin/python3

.PHONY: install demo test bench uninstall

install:
	./install.sh

demo: install
	scripts/test-env.sh
	scripts/demo.sh

test: install
	scripts/test-env.sh
	$(PY) -m pip install -q --disable-pip-version-check "pytest>=7" 2>&1 | grep -v "is ignored: it is neither" || true
	$(PY) -m pytest tests

bench: install
	scripts/test-env.sh
	$(PY) bench/bench_policy.py
	@for b in bench/bench_*.py; do [ "$$b" = bench/bench_policy.py ] || $(PY) $$b || exit 1; done

uninstall:
	./install.sh --uninstall
