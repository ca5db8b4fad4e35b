# Bourse's one command runner. `make help` lists every target.
# Every target installs what it needs: a .venv with uv (from PyPI) and the locked dependencies.

SHELL := bash
.DEFAULT_GOAL := help
.SHELLFLAGS := -eu -o pipefail -c

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV := $(BIN)/uv
STAMP := $(VENV)/.installed-stamp
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(CURDIR)/$(VENV)

# The web UI (web/, docs/decisions/0031-ui-stack.md): Node 20+ and npm build it into
# src/bourse/webui/dist, which `bourse serve` serves at / and the wheel ships. It is
# rebuilt when missing or older than anything in web/ (node_modules aside).
WEB_DIST := src/bourse/webui/dist
WEB_BUILT := $(WEB_DIST)/index.html
WEB_MODULES := web/node_modules/.package-lock.json
WEB_SOURCES := $(shell find web \( -path web/node_modules -o -path web/coverage -o -name '*.tsbuildinfo' \) -prune -o -type f -print 2>/dev/null)

$(STAMP): pyproject.toml uv.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Bourse needs Python 3.11 or newer; set PYTHON=python3.11 (or newer)")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@test -x $(UV) || $(BIN)/python -m pip install --quiet --disable-pip-version-check uv
	@$(UV) sync --frozen --quiet --python $(BIN)/python
	@touch $@

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  %-15s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: install
install: $(STAMP) ## Create .venv and install Bourse with its locked dependencies

.PHONY: up
up: $(STAMP) $(WEB_BUILT) ## Run Bourse on this machine: SQLite, embedded processes, the UI and API at http://127.0.0.1:8000
	@$(BIN)/bourse up

$(WEB_MODULES): web/package.json web/package-lock.json
	@command -v npm > /dev/null || { echo "Building the web UI needs Node 20 or newer with npm (https://nodejs.org/)" >&2; exit 1; }
	@node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' \
	  || { echo "Building the web UI needs Node 20 or newer; this is Node $$(node --version)" >&2; exit 1; }
	@cd web && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

$(WEB_BUILT): $(WEB_MODULES) $(WEB_SOURCES)
	@cd web && npm run --silent build
	@touch $@

.PHONY: web
web: $(WEB_BUILT) ## Build the web UI into src/bourse/webui/dist (only when missing or older than web/)

.PHONY: web-dev
web-dev: $(WEB_MODULES) ## Serve the web UI with Vite's hot reload on :5173, against `make up` on :8000
	@cd web && npm run dev

.PHONY: web-api
web-api: $(STAMP) $(WEB_MODULES) ## Regenerate web/openapi.json (bourse openapi) and the UI's API types from it
	@$(BIN)/bourse openapi --output web/openapi.json
	@cd web && npm run --silent gen:api

.PHONY: web-e2e
web-e2e: $(STAMP) $(WEB_BUILT) ## The UI end to end: Playwright in Debian's Chromium (CHROMIUM_PATH) against a real `bourse up`, with axe and screenshots
	@test -x "$${CHROMIUM_PATH:-/usr/bin/chromium}" || { echo "The end-to-end tests drive Debian's Chromium: apt-get install chromium (or set CHROMIUM_PATH)" >&2; exit 1; }
	@cd web && npm run --silent e2e

.PHONY: web-check
web-check: $(STAMP) $(WEB_MODULES) ## The UI's checks: API types match the served schema, tsc, ESLint, Vitest
	@fresh=$$(mktemp); trap 'rm -f "$$fresh"' EXIT; \
	$(BIN)/bourse openapi --output "$$fresh"; \
	cmp -s "$$fresh" web/openapi.json \
	  || { echo "web/openapi.json differs from the schema the API serves; run \`make web-api\` and commit both files" >&2; exit 1; }
	@echo "web/openapi.json matches the served schema"
	@cd web && npm run --silent check:api
	@cd web && npm run --silent typecheck && npx tsc --noEmit -p e2e/tsconfig.json && echo "tsc --noEmit (the app and e2e/): clean"
	@cd web && npm run --silent lint && echo "eslint: clean"
	@cd web && npm run --silent test

.PHONY: serve
serve: $(STAMP) ## Serve only the HTTP API (expects a migrated database)
	@$(BIN)/bourse serve

.PHONY: migrate
migrate: $(STAMP) ## Upgrade the configured database to the latest migration
	@$(BIN)/bourse migrate

# The suite runs in two tiers, each in parallel with pytest-xdist (one PostgreSQL database
# and one SQLite file per worker). In-process tests mostly wait on PostgreSQL, so they
# take more workers than there are cores; tests marked `process` start real process
# stacks that need the cores themselves. Measured on 2 cores: in-process 4 workers 222 s;
# process 2 workers 706 s, 3 workers 657 s. Set a count to 0 to run that tier serially.
TEST_WORKERS ?= 4
PROCESS_WORKERS ?= 3
# In-process tests are spread one by one (--dist load). Process tests are spread by file
# (--dist loadfile): a module's tests run on one worker in file order, so a module-scoped
# process stack starts once, and the payments flows that build on each other keep their order.
FAST_DIST = --dist load
PROCESS_DIST = --dist loadfile

# $(call pytest_tier,name,marker expression,workers,xdist options): run one tier and print its duration.
# Exit status 5 (nothing selected, e.g. PYTEST_ARGS names only files of the other tier) passes.
define pytest_tier
	@printf '==> %s tests: pytest -m "%s" -n %s %s %s\n' '$(1)' '$(2)' '$(3)' '$(4)' '$(PYTEST_ARGS)'; \
	started=$$SECONDS; status=0; \
	$(BIN)/pytest -m '$(2)' -n $(3) $(4) $(PYTEST_ARGS) || status=$$?; \
	printf '    [%s tests: %d s]\n' '$(1)' "$$((SECONDS - started))"; \
	if [ "$$status" -eq 5 ]; then echo "    (no $(1) tests selected)"; status=0; fi; \
	exit "$$status"
endef

.PHONY: test
test: $(STAMP) ## Run the whole suite: the in-process tier, then the process tier, both even if the first fails (services skip if unreachable, unless BOURSE_REQUIRE_SERVICES=1)
	@status=0; \
	$(MAKE) --no-print-directory test-fast || status=$$?; \
	$(MAKE) --no-print-directory test-process || status=$$?; \
	exit "$$status"

.PHONY: test-fast
test-fast: $(STAMP) ## Run only the in-process tests (not marked `process`), TEST_WORKERS in parallel
	$(call pytest_tier,in-process,not process,$(TEST_WORKERS),$(FAST_DIST))

.PHONY: test-process
test-process: $(STAMP) ## Run only the tests marked `process` (real servers, workers, CLI), PROCESS_WORKERS in parallel, then those marked `alone` one at a time
	@status=0; \
	$(MAKE) --no-print-directory test-process-shared || status=$$?; \
	$(MAKE) --no-print-directory test-process-alone || status=$$?; \
	exit "$$status"

.PHONY: test-process-shared test-process-alone
test-process-shared: $(STAMP)
	$(call pytest_tier,process,process and not alone,$(PROCESS_WORKERS),$(PROCESS_DIST))

test-process-alone: $(STAMP)
	$(call pytest_tier,process (alone),process and alone,0,)

.PHONY: lint
lint: $(STAMP) ## Lint with ruff
	@$(BIN)/ruff check src tests migrations deploy

.PHONY: format
format: $(STAMP) ## Format the code with ruff
	@$(BIN)/ruff format src tests migrations deploy
	@$(BIN)/ruff check --fix src tests migrations deploy

.PHONY: format-check
format-check: $(STAMP) ## Check formatting without changing files
	@$(BIN)/ruff format --check src tests migrations deploy

.PHONY: typecheck
typecheck: $(STAMP) ## Type-check src/bourse, deploy and tests with mypy --strict
	@$(BIN)/mypy

.PHONY: imports
imports: $(STAMP) ## Check the import contracts in pyproject.toml (layers, no framework below the API) with import-linter
	@$(BIN)/lint-imports --no-cache

.PHONY: alembic-check
alembic-check: $(STAMP) ## Fail if the models and the migrations have drifted apart (on a scratch SQLite database)
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	  export BOURSE_DATABASE_URL="sqlite:///$$tmp/check.db" && \
	  $(BIN)/bourse migrate >/dev/null && $(BIN)/alembic check

.PHONY: check
check: lint format-check typecheck imports alembic-check ## All static checks: lint, format, types, import contracts, migrations

.PHONY: schemathesis
schemathesis: $(STAMP) ## Fuzz the running API against its OpenAPI schema (scratch PostgreSQL database): no 5xx, nothing undocumented
	@bash .ci/schemathesis

BENCH_DB ?= postgresql://postgres@127.0.0.1:5432/bourse_bench
BENCH_CLIENTS ?= 8
BENCH_SECONDS ?= 20
BENCH_PORT ?= 8765
BENCH_SERVER_WORKERS ?= 2

BENCH_DEPOSITS ?= 2000
BENCH_MATCHER_ORDERS ?= 3000
# Issue 15's spike, BASE:PEAK:RAMP:HOLD (requests/s, requests/s, s, s; 10 s at BASE before and
# after), sent by BENCH_SPIKE_CLIENTS processes of BENCH_SPIKE_THREADS connections each.
BENCH_SPIKE ?= 50:500:30:60
BENCH_SPIKE_CLIENTS ?= 4
BENCH_SPIKE_THREADS ?= 32
BENCH_SPIKE_TRADERS ?= 256
BENCH_REDIS ?= redis://127.0.0.1:6379/0
BENCH_STREAM_PORT ?= 8766
BENCH_SUBSCRIBERS ?= 1000
BENCH_FANOUT_RATE ?= 20
BENCH_FANOUT_SECONDS ?= 30
# external: `bourse stream` serves the WebSocket; in-process: the API processes do (the comparison).
BENCH_FANOUT_STREAM ?= external
# Drop and create BENCH_DB, then migrate it (BOURSE_DATABASE_URL must name it).
RECREATE_BENCH_DB = $(BIN)/python -c 'import sys, sqlalchemy as sa; u = sa.make_url(sys.argv[1]); \
	    e = sa.create_engine(u.set(drivername="postgresql+psycopg", database="postgres"), isolation_level="AUTOCOMMIT"); \
	    c = e.connect(); c.exec_driver_sql(f"DROP DATABASE IF EXISTS \"{u.database}\" WITH (FORCE)"); \
	    c.exec_driver_sql(f"CREATE DATABASE \"{u.database}\"")' $(BENCH_DB) && \
	  $(BIN)/bourse migrate >/dev/null

.PHONY: bench-baseline
bench-baseline: $(STAMP) ## pgbench TPC-B (-M prepared) on BENCH_DB's server, BENCH_CLIENTS clients, BENCH_SECONDS s
	@BOURSE_DATABASE_URL=$(BENCH_DB) $(BIN)/bourse bench pgbench --clients $(BENCH_CLIENTS) --seconds $(BENCH_SECONDS) --json

.PHONY: bench-ledger
bench-ledger: $(STAMP) ## Recreate BENCH_DB, then pgbench, `bench ledger` and `bench ledger-http` (serve --workers BENCH_SERVER_WORKERS) in one run (var/bench/ledger.jsonl)
	@mkdir -p var/bench && out=var/bench/ledger.jsonl && : > $$out && \
	  export BOURSE_DATABASE_URL=$(BENCH_DB) BOURSE_LOG_LEVEL=warning && \
	  $(RECREATE_BENCH_DB) && \
	  $(BIN)/bourse bench pgbench --clients $(BENCH_CLIENTS) --seconds $(BENCH_SECONDS) --json | tee -a $$out && \
	  $(BIN)/bourse bench ledger --concurrency $(BENCH_CLIENTS) --seconds $(BENCH_SECONDS) --json | tee -a $$out && \
	  { $(BIN)/bourse serve --port $(BENCH_PORT) --workers $(BENCH_SERVER_WORKERS) & server=$$!; trap 'kill $$server 2>/dev/null; wait $$server 2>/dev/null' EXIT; } && \
	  for _ in $$(seq 100); do $(BIN)/bourse healthcheck --ready --port $(BENCH_PORT) && break; sleep 0.2; done && \
	  $(BIN)/bourse bench ledger-http --url http://127.0.0.1:$(BENCH_PORT) --concurrency $(BENCH_CLIENTS) \
	    --seconds $(BENCH_SECONDS) --json | tee -a $$out

.PHONY: bench-wallets
bench-wallets: $(STAMP) ## Recreate BENCH_DB, then `bench wallets-http`: GET /wallets vs uvicorn hello world under wrk (needs wrk)
	@mkdir -p var/bench && out=var/bench/wallets.jsonl && : > $$out && \
	  export BOURSE_DATABASE_URL=$(BENCH_DB) BOURSE_LOG_LEVEL=warning && \
	  $(RECREATE_BENCH_DB) && \
	  $(BIN)/bourse bench wallets-http --server-workers $(BENCH_SERVER_WORKERS) --seconds $(BENCH_SECONDS) --json | tee -a $$out

.PHONY: bench-deposits
bench-deposits: $(STAMP) ## Recreate BENCH_DB, then `bench deposits`: flat out, and at 100/s (var/bench/deposits.jsonl)
	@mkdir -p var/bench && out=var/bench/deposits.jsonl && : > $$out && \
	  export BOURSE_DATABASE_URL=$(BENCH_DB) BOURSE_LOG_LEVEL=warning && \
	  $(RECREATE_BENCH_DB) && \
	  $(BIN)/bourse bench deposits --count $(BENCH_DEPOSITS) --json | tee -a $$out && \
	  $(BIN)/bourse bench deposits --count $(BENCH_DEPOSITS) --rate 100 --json | tee -a $$out

.PHONY: bench-orders
bench-orders: $(STAMP) ## Recreate BENCH_DB, then `bench orders-http` on BTC-USD (serve --workers BENCH_SERVER_WORKERS, `bourse matcher` beside it, as in production): flat out, and at 200/s (var/bench/orders.jsonl)
	@mkdir -p var/bench && out=var/bench/orders.jsonl && : > $$out && \
	  export BOURSE_DATABASE_URL=$(BENCH_DB) BOURSE_LOG_LEVEL=warning BOURSE_MATCHER=external && \
	  $(RECREATE_BENCH_DB) && \
	  { $(BIN)/bourse matcher & matcher=$$!; \
	    $(BIN)/bourse serve --port $(BENCH_PORT) --workers $(BENCH_SERVER_WORKERS) & server=$$!; \
	    trap 'kill $$server $$matcher 2>/dev/null; wait $$server $$matcher 2>/dev/null' EXIT; } && \
	  for _ in $$(seq 100); do $(BIN)/bourse healthcheck --ready --port $(BENCH_PORT) && break; sleep 0.2; done && \
	  $(BIN)/bourse bench orders-http --url http://127.0.0.1:$(BENCH_PORT) --concurrency $(BENCH_CLIENTS) \
	    --seconds $(BENCH_SECONDS) --json | tee -a $$out && \
	  $(BIN)/bourse bench orders-http --url http://127.0.0.1:$(BENCH_PORT) --concurrency $(BENCH_CLIENTS) \
	    --seconds $(BENCH_SECONDS) --rate 200 --json | tee -a $$out

.PHONY: bench-spike
bench-spike: $(STAMP) ## Recreate BENCH_DB, then the spike BENCH_SPIKE (50:500:30:60) through `bench orders-http --spike` (serve --workers BENCH_SERVER_WORKERS, `bourse matcher` beside it): timeline, no 5xx, every order settled (var/bench/spike.jsonl)
	@mkdir -p var/bench && out=var/bench/spike.jsonl && : > $$out && \
	  export BOURSE_DATABASE_URL=$(BENCH_DB) BOURSE_LOG_LEVEL=warning BOURSE_MATCHER=external && \
	  $(RECREATE_BENCH_DB) && \
	  { $(BIN)/bourse matcher & matcher=$$!; \
	    $(BIN)/bourse serve --port $(BENCH_PORT) --workers $(BENCH_SERVER_WORKERS) & server=$$!; \
	    trap 'kill $$server $$matcher 2>/dev/null; wait $$server $$matcher 2>/dev/null' EXIT; } && \
	  for _ in $$(seq 100); do $(BIN)/bourse healthcheck --ready --port $(BENCH_PORT) && break; sleep 0.2; done && \
	  $(BIN)/bourse bench orders-http --url http://127.0.0.1:$(BENCH_PORT) --spike $(BENCH_SPIKE) \
	    --concurrency $(BENCH_SPIKE_CLIENTS) --threads $(BENCH_SPIKE_THREADS) --traders $(BENCH_SPIKE_TRADERS) \
	    --json | tee -a $$out

.PHONY: bench-fanout
bench-fanout: $(STAMP) ## Recreate BENCH_DB, then `bench fanout` on BTC-USD: serve --workers BENCH_SERVER_WORKERS, `bourse matcher`, `bourse stream` (BENCH_FANOUT_STREAM=external), orders at BENCH_FANOUT_RATE/s with 0 and BENCH_SUBSCRIBERS WebSocket subscribers (var/bench/fanout.jsonl)
	@mkdir -p var/bench && out=var/bench/fanout.jsonl && : > $$out && \
	  export BOURSE_DATABASE_URL=$(BENCH_DB) BOURSE_DATABASE_DIRECT_URL=$(BENCH_DB) BOURSE_REDIS_URL=$(BENCH_REDIS) \
	    BOURSE_QUEUE_REDIS_PREFIX=bench-fanout: BOURSE_STREAM=$(BENCH_FANOUT_STREAM) BOURSE_MATCHER=external \
	    BOURSE_MATCHER_HEARTBEAT_PATH=var/bench/matcher.heartbeat BOURSE_LOG_LEVEL=warning && \
	  $(RECREATE_BENCH_DB) && \
	  { $(BIN)/bourse serve --port $(BENCH_PORT) --workers $(BENCH_SERVER_WORKERS) & server=$$!; \
	    $(BIN)/bourse matcher & matcher=$$!; stream=; \
	    if [ "$(BENCH_FANOUT_STREAM)" = external ]; then $(BIN)/bourse stream --port $(BENCH_STREAM_PORT) & stream=$$!; \
	      ws=http://127.0.0.1:$(BENCH_STREAM_PORT); else ws=http://127.0.0.1:$(BENCH_PORT); fi; \
	    trap 'kill $$server $$matcher $$stream 2>/dev/null; wait $$server $$matcher $$stream 2>/dev/null' EXIT; } && \
	  for _ in $$(seq 150); do $(BIN)/bourse healthcheck --ready --port $(BENCH_PORT) && break; sleep 0.2; done && \
	  for _ in $$(seq 150); do $(BIN)/bourse healthcheck --ready --port $${ws##*:} && break; sleep 0.2; done && \
	  $(BIN)/bourse bench fanout --api-url http://127.0.0.1:$(BENCH_PORT) --stream-url $$ws \
	    --subscribers $(BENCH_SUBSCRIBERS) --rate $(BENCH_FANOUT_RATE) --seconds $(BENCH_FANOUT_SECONDS) --json | tee -a $$out

.PHONY: bench-matching
bench-matching: $(STAMP) ## The in-memory order book on one core: `bench matching` with 200,000 orders
	@$(BIN)/bourse bench matching --orders 200000 --json

.PHONY: bench-matcher
bench-matcher: $(STAMP) ## Recreate BENCH_DB, then `bench matcher` on BTC-USD: the matcher alone draining BENCH_MATCHER_ORDERS pending commands, batched and one by one (var/bench/matcher.jsonl)
	@mkdir -p var/bench && out=var/bench/matcher.jsonl && : > $$out && \
	  export BOURSE_DATABASE_URL=$(BENCH_DB) BOURSE_LOG_LEVEL=warning && \
	  $(RECREATE_BENCH_DB) && \
	  $(BIN)/bourse bench matcher --orders $(BENCH_MATCHER_ORDERS) --json | tee -a $$out

# --- Docker: the image and the compose stack (README, "Run with Docker") ---------------
DOCKER ?= docker
# Compose v2 (`docker compose`) when the engine has it, else docker-compose 1.29.
COMPOSE ?= $(shell $(DOCKER) compose version >/dev/null 2>&1 && echo "$(DOCKER) compose" || echo docker-compose)
IMAGE ?= bourse:local
# Extra `docker build` flags, e.g. CI's --network host and CA bundle build arguments.
DOCKER_BUILD_FLAGS ?=
COMPOSE_PROJECT ?= bourse
COMPOSE_FILES = -f compose.yaml $(if $(DEV),-f compose.dev.yaml)
IMAGE_VERSION = $(shell sed -n 's/^__version__ = "\(.*\)"$$/\1/p' src/bourse/__init__.py)
IMAGE_REVISION = $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
IMAGE_SOURCE = $(shell git config --get remote.origin.url 2>/dev/null || echo "file://$(CURDIR)")

.PHONY: image
image: ## Build the container image (IMAGE, default bourse:local) from the Dockerfile
	@DOCKER_BUILDKIT=1 $(DOCKER) build $(DOCKER_BUILD_FLAGS) \
	  --build-arg VERSION=$(IMAGE_VERSION) --build-arg REVISION=$(IMAGE_REVISION) --build-arg SOURCE=$(IMAGE_SOURCE) \
	  --tag $(IMAGE) .

.PHONY: compose-secrets
compose-secrets: ## Generate strong random secrets for the compose stack into .secrets/ (git-ignored); existing ones are kept
	@bash deploy/compose-secrets.sh .secrets

.PHONY: compose-up
compose-up: $(STAMP) compose-secrets image ## Start the stack with Docker (DEV=1 adds compose.dev.yaml) and wait until healthy: http://127.0.0.1:8080
	@APP_IMAGE=$(IMAGE) $(COMPOSE) -p $(COMPOSE_PROJECT) $(COMPOSE_FILES) up --detach --no-build
	@APP_IMAGE=$(IMAGE) $(BIN)/python -m deploy.stack wait --compose "$(COMPOSE)" --project $(COMPOSE_PROJECT) $(COMPOSE_FILES)
	@echo "Bourse is running at http://127.0.0.1:$${HTTP_PORT:-8080}  (API docs: http://127.0.0.1:$${HTTP_PORT:-8080}/api/docs)"

.PHONY: compose-down
compose-down: ## Stop and remove the stack (VOLUMES=1 also deletes its PostgreSQL and Redis data)
	@APP_IMAGE=$(IMAGE) $(COMPOSE) -p $(COMPOSE_PROJECT) $(COMPOSE_FILES) down $(if $(VOLUMES),--volumes)

.PHONY: compose-e2e
compose-e2e: $(STAMP) image ## Start a fresh stack, drive it through nginx end to end and through its fault checks, then remove it
	@$(BIN)/python -m deploy.e2e --compose "$(COMPOSE)" --image $(IMAGE)

# --- Kubernetes (deploy/k8s, docs/deploy.md) -----------------------------------------
OVERLAY ?= production-sealed
K8S_TOOLS := var/k8s-tools
K8S_OVERLAYS := $(wildcard deploy/k8s/overlays/*/kustomization.yaml)

$(K8S_TOOLS)/.installed-stamp: deploy/k8s/tools-requirements.txt
	@test -x $(K8S_TOOLS)/bin/python || $(PYTHON) -m venv $(K8S_TOOLS)
	@$(K8S_TOOLS)/bin/python -m pip install --quiet --disable-pip-version-check -r deploy/k8s/tools-requirements.txt
	@touch $@

.PHONY: deploy-tools
deploy-tools: $(K8S_TOOLS)/.installed-stamp ## Install the manifest validators (kubernetes-validate, checkov) into var/k8s-tools

.PHONY: deploy-check
deploy-check: $(K8S_TOOLS)/.installed-stamp ## Render every overlay; kubernetes-validate --strict and checkov over the result
	@bash deploy/k8s/check.sh $(K8S_TOOLS)

.PHONY: deploy-image
deploy-image: ## Pin every overlay to the image DIGEST=sha256:... (IMAGE_NAME=registry/name to change the name)
	@[[ "$(DIGEST)" =~ ^sha256:[0-9a-f]{64}$$ ]] || { echo "DIGEST must be sha256: and 64 hex digits, got '$(DIGEST)'" >&2; exit 2; }
	@for k in $(K8S_OVERLAYS); do \
	  sed -i -E "s|^(    digest: )sha256:[0-9a-f]{64}$$|\1$(DIGEST)|" $$k; \
	  if [ -n "$(IMAGE_NAME)" ]; then sed -i -E "s|^(    newName: ).*$$|\1$(IMAGE_NAME)|" $$k; fi; \
	  grep -q "digest: $(DIGEST)" $$k || { echo "$$k: no digest line to set" >&2; exit 1; }; \
	done; echo "every overlay now runs $(DIGEST)"

.PHONY: deploy
deploy: ## Migrate (the Job, awaited), then roll out OVERLAY (default production-sealed) with kubectl
	@bash deploy/k8s/deploy.sh $(OVERLAY)

.PHONY: deploy-seal
deploy-seal: ## Seal SECRET=path/to/secret.yaml (a plain Secret, never committed) into OVERLAY's sealed-secrets.yaml
	@test -f "$(SECRET)" || { echo "SECRET must name a plain Secret manifest (kept out of git)" >&2; exit 2; }
	@kubeseal --format yaml < "$(SECRET)" > deploy/k8s/overlays/$(OVERLAY)/sealed-secrets.yaml.new
	@mv deploy/k8s/overlays/$(OVERLAY)/sealed-secrets.yaml.new deploy/k8s/overlays/$(OVERLAY)/sealed-secrets.yaml
	@echo "sealed into deploy/k8s/overlays/$(OVERLAY)/sealed-secrets.yaml; commit it, never $(SECRET)"

.PHONY: ci
ci: ## What CI runs: .ci/run
	@bash .ci/run

.PHONY: lock
lock: $(STAMP) ## Re-resolve the dependencies into uv.lock
	@$(UV) lock

.PHONY: clean
clean: ## Remove the venv, caches and the embedded database in ./var
	@rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .hypothesis
