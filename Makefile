# The suite's entry points. `make demo` and `make test` are the two commands a newcomer needs.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
ANSIBLE_PLAYBOOK := $(VENV)/bin/ansible-playbook
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg

LAB_PAIRS ?= 1
LAB_FLAVOUR ?= namespaces
DEMO_ARGS ?=

.PHONY: help setup lab-up lab-down demo test lint unit bench guest-image

help:
	@echo "make setup     install everything (Debian packages, .venv, CRIU $(shell sed -n 's/^criu_version: "\(.*\)"/\1/p' roles/criu/defaults/main.yml))"
	@echo "make lab-up    start the built-in two-host lab (LAB_PAIRS=$(LAB_PAIRS))"
	@echo "make lab-down  stop it and remove every trace"
	@echo "make guest-image  build (or confirm the cache of) the soft-dirty guest lab's image;"
	@echo "               LAB_FLAVOUR=guest with lab-up / lab-down runs that lab (two QEMU guests)"
	@echo "make demo      setup + lab-up + one real CRIU migration, printing the summary"
	@echo "make lint      ruff, ansible-lint (production profile), playbook syntax checks"
	@echo "make test      lint + the whole pytest suite (what CI runs)"
	@echo "make bench     the performance benchmarks (BENCH=transfer|critical-path|tls|links|links-downtime; default all)"

setup:
	@scripts/setup.sh

lab-up: setup
	@$(ANSIBLE_PLAYBOOK) playbooks/lab.yml -e lab_state=present -e lab_pairs=$(LAB_PAIRS) -e lab_flavour=$(LAB_FLAVOUR)

# The soft-dirty guest lab's image (Debian 12 kernel + minimal root), cached in .cache/guest/.
guest-image: setup
	@scripts/build-guest-image.sh

lab-down:
	@if [ -x $(ANSIBLE_PLAYBOOK) ]; then \
	  $(ANSIBLE_PLAYBOOK) playbooks/lab.yml -e lab_state=absent -e lab_flavour=$(LAB_FLAVOUR); \
	else echo "lab-down: no .venv, so no lab was started by this checkout"; fi

demo: lab-up
	@$(ANSIBLE_PLAYBOOK) migrate.yml -e workload=memory -e mb_size=64 -e interval=0.5 -e max_memory=256 $(DEMO_ARGS)

lint: setup
	@scripts/lint.sh

test: setup
	@scripts/run-tests.sh

# The benchmarks, by section (BENCH=transfer | critical-path | tls | links | links-downtime; all but
# links-downtime by default): each prints
# its table and ratio lines; raw figures and charts under results/bench/ and .cache/.
BENCH ?= all
bench: lab-up
	@scripts/bench.sh $(BENCH)
