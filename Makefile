# Thin wrappers; each target says what it runs. See README.md.
VENV      ?= .venv
# reprovision first: it has no paced-load drill, and runs while swarm (beside it) converges.
SCENARIOS ?= reprovision default users swarm hitcounter
# Scenarios that run in a second lane beside the others (scripts/molecule-lanes), one after the
# other; their hosts have names of their own (swarm-N, hitcounter-1), and the lanes take about as
# long as each other.
SCENARIOS_BESIDE ?= swarm hitcounter
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export ANSIBLE_NOCOLOR ?= 1
export NO_COLOR ?= 1

.PHONY: up down test lint unittest apptest molecule toolchain prepare-machine kit bench bench-engine bench-hitcounter bench-users bench-reprovision bench-swarm
APP_STACK ?= hitcounter

## up: toolchain + image kit + local staging host, then site.yml against it (README command 1)
up: toolchain kit
	ansible-playbook playbooks/local.yml
	ansible-playbook playbooks/site.yml -e app_stack=$(APP_STACK)
	@echo "[up] $(APP_STACK) on staging-local: http://127.0.0.1:18000/"
	@echo "[up] log in: ssh -p 2222 -i .cache/ssh/id_ed25519 -o UserKnownHostsFile=.cache/ssh/known_hosts deploy@127.0.0.1"

## down: remove the local staging host and its engine volume
down: toolchain
	ansible-playbook playbooks/local.yml -e staging_host_state=absent

## test: lint + unit tests + app tests against real servers + every molecule scenario (README command 2)
test: lint unittest apptest molecule

## unittest: compose_stack's filters and release module (seconds, no host)
unittest: toolchain
	python -m pytest -q tests/unit

apptest: toolchain prepare-machine
	python -m pytest -q tests/apps

lint: toolchain
	yamllint .
	ansible-lint

## molecule: every scenario in SCENARIOS, those in SCENARIOS_BESIDE in a second lane at once
molecule: toolchain kit
	scripts/molecule-lanes "$(SCENARIOS)" "$(SCENARIOS_BESIDE)"

## bench: every benchmark (figures only, no assertions); BENCH_SECONDS=5 for a short run
bench: bench-engine bench-hitcounter bench-users bench-reprovision bench-swarm

## bench-engine: over SSH on fresh staging hosts: bare apt floor, docker_engine and site.yml cold and
## no-op, the archive copy, Mitogen's no-op, and the no-op of a fleet of 1, 2, 4 (batch 1 and N)
bench-engine: toolchain kit
	scripts/bench-engine

## bench-hitcounter: deployed vs seed dev server vs no-Redis ceiling, at the 128M limit
bench-hitcounter: toolchain kit
	scripts/bench-hitcounter

## bench-reprovision: cold vs no-op site.yml; failed/total and longest gap under paced load for every
## availability event (replica restart/kills, rollout, rollback, proxy reload, datastore restart) on
## both stacks; the proxy's throughput cost and memory
bench-reprovision: toolchain kit
	scripts/bench-reprovision

## bench-swarm: a 3-node cluster: cold provisioning vs 3 x one host, no-op; failed/total under paced
## load for a rolling update, an automatic rollback and the loss of a worker; time to reschedule
bench-swarm: toolchain kit
	scripts/bench-swarm

## bench-users: inserts vs the seed's dev server, GET /users at 1k and 100k rows, at the 128M limit
bench-users: toolchain kit
	scripts/bench-users

toolchain: $(VENV)/.installed
$(VENV)/.installed: requirements-dev.txt roles/hitcounter/files/app/requirements.txt roles/users/files/app/requirements.txt
	@echo "[toolchain] installing the pinned controller toolchain into $(VENV) (about 60 s)"
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements-dev.txt -r roles/hitcounter/files/app/requirements.txt -r roles/users/files/app/requirements.txt
	@touch $@

prepare-machine:
	scripts/prepare-machine

kit: prepare-machine
	molecule/kit/build-images
	molecule/kit/make-test-ca .cache/tls
	molecule/kit/registry .cache/tls
	@for image in python haproxy redis postgres; do molecule/kit/build-images --save .cache/images/$$image.tar $$image; done
