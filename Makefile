# kubetune — every set-up step lives here so a fresh clone needs nothing else.
#
#   make test     ruff + mypy + pytest (creates the cached virtualenv on first use)
#   make demo     the main job on the embedded local cluster's real node
#   make images   the operator and trainer images (docker.io, cached layers)
#
# The virtualenv and all downloads live outside the clone, keyed by the lock file,
# so a second run (or CI on the same machine) installs nothing.

SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.8
KUBETUNE_CACHE ?= $(HOME)/.cache/kubetune
export KUBETUNE_CACHE
LOCK := requirements.lock
LOCK_HASH := $(shell sha256sum $(LOCK) 2>/dev/null | cut -c1-16)
UV_DIR := $(KUBETUNE_CACHE)/uv-$(UV_VERSION)
UV := $(UV_DIR)/bin/uv
export UV_CACHE_DIR ?= $(KUBETUNE_CACHE)/uv-cache
# Two layers: the heavy dependencies in a shared venv keyed by the lock (outside the
# clone), and a tiny per-clone .venv that puts this clone's sources first on sys.path.
# So a CI clone always tests its own code, never another checkout's.
DEPS := $(KUBETUNE_CACHE)/venv-$(LOCK_HASH)
DEPS_STAMP := $(DEPS)/.kubetune-deps-installed
VENV := $(CURDIR)/.venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.kubetune-installed
PYTEST_ARGS ?=

.PHONY: help venv lock test lint typecheck pytest crds demo demo-down images clean-venv

help:
	@sed -n '2,9p' Makefile

$(UV):
	$(PYTHON) -m venv $(UV_DIR)
	$(UV_DIR)/bin/pip install -q uv==$(UV_VERSION)

# deepspeed ships only as an sdist whose build imports torch: install everything else
# first, then build it against that torch without build isolation.
$(DEPS_STAMP): $(LOCK) | $(UV)
	$(UV) venv -q --allow-existing --python $(PYTHON) $(DEPS)
	grep -v '^deepspeed==' $(LOCK) > $(DEPS)/lock-sans-deepspeed.txt
	VIRTUAL_ENV=$(DEPS) $(UV) pip sync -q $(DEPS)/lock-sans-deepspeed.txt
	VIRTUAL_ENV=$(DEPS) DS_BUILD_OPS=0 $(UV) pip install -q --no-deps --no-build-isolation \
	  "$$(grep '^deepspeed==' $(LOCK))"
	touch $@

$(STAMP): $(DEPS_STAMP) pyproject.toml
	rm -rf $(VENV)
	$(UV) venv -q --python $(DEPS)/bin/python $(VENV)
	site=$$($(VPY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
	deps=$$($(DEPS)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
	printf '%s\n' "$(CURDIR)/operator" "$(CURDIR)/trainer-image" > $$site/kubetune-src.pth; \
	echo "import site; site.addsitedir('$$deps')" > $$site/zz-kubetune-deps.pth; \
	printf '#!%s\nfrom kubetune.cli.main import main\nraise SystemExit(main())\n' "$(VPY)" \
	  > $(VENV)/bin/kubetune; chmod +x $(VENV)/bin/kubetune
	for tool in pytest mypy; do \
	  printf '#!/bin/sh\nexec "%s" -m %s "$$@"\n' "$(VPY)" $$tool > $(VENV)/bin/$$tool; \
	  chmod +x $(VENV)/bin/$$tool; done
	ln -sf $(DEPS)/bin/ruff $(VENV)/bin/ruff
	touch $@

venv: $(STAMP)
	@echo $(VENV)

# Re-resolve the lock (needs the network); commit the result.
lock: | $(UV)
	$(UV) pip compile -q pyproject.toml --extra operator --extra trainer --extra dev \
	  --python-version 3.11 --python-platform x86_64-unknown-linux-gnu -o $(LOCK)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VPY) -m mypy operator/kubetune trainer-image/kubetune_trainer tests

crds: $(STAMP)
	$(VPY) -m kubetune.api.crd > crds/finetunejob.yaml
	cp crds/finetunejob.yaml charts/kubetune/crds/finetunejob.yaml
	@echo wrote crds/finetunejob.yaml and its copy in charts/kubetune/crds/

# Everything the cluster tests need, built (or found cached) before pytest starts, so a
# cold machine's builds (minutes) never run inside a test's time limit (skipped with
# KUBETUNE_SKIP_CLUSTER, which skips the cluster tests).
.PHONY: test-deps
test-deps: k8s-bins helm node-bins images gitops-tools

# pytest exits 5 when it collects nothing: for us that is a broken suite, never a pass.
pytest: $(STAMP) $(if $(KUBETUNE_SKIP_CLUSTER),,test-deps)
	@$(VPY) -m pytest -n 2 $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; fi; exit $$rc

test: lint typecheck pytest

# The demo LoRA FineTuneJob on the local cluster `demo` and its real node (kubelet +
# containerd): the helm-installed operator image under the chart's ServiceAccount, the
# trainer image, live progress, final status. Builds what is missing; re-runnable.
demo: $(STAMP)
	$(VPY) -m tests.localcluster.demo up

demo-down: $(STAMP)
	$(VPY) -m tests.localcluster.demo down

# The operator and trainer images (operator/Dockerfile, trainer-image/Dockerfile), built with
# Debian's docker.io on a private socket from debootstrap-made bases; layers cached in
# $(KUBETUNE_CACHE)/docker, so a rerun rebuilds only what changed. See docs/images.md.
images:
	hack/build-images.sh

# The local cluster's binaries (kube-apiserver, -controller-manager, -scheduler, kubectl from
# source; etcd from Debian), the real node's (kubelet, kube-proxy, pause, CoreDNS, the fake-GPU
# device plugin; containerd, runc and CNI plugins from Debian) and helm, cached under
# $(KUBETUNE_CACHE)/k8s-<v>, nodeaddons-<hash>, helm-<v>.
.PHONY: k8s-bins node-bins helm gitops-tools
k8s-bins:
	hack/build-k8s.sh k8s

node-bins:
	hack/build-k8s.sh node

helm:
	hack/build-k8s.sh helm

# kstatus (cli-utils and Flux's fork), Argo CD's Lua runtime and kubeconform, for the health
# tests; cached under $(KUBETUNE_CACHE)/gitops-tools-<hash>.
gitops-tools:
	hack/build-gitops-tools.sh

clean-venv:
	rm -rf $(VENV)
