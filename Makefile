# The two commands of the README: `make run` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
DEV     := var/dev
STAMP   := $(VENV)/.installed
DEBIAN_TEST_PACKAGES := swaks mutt isync offlineimap3 rspamd redis-server unbound clamav-daemon postgresql chromium

.PHONY: run test lint deps debs clean-dev bench

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

deps: $(STAMP)

$(DEV)/appliance.toml: | $(STAMP)
	$(BIN)/appliance init $(DEV) --domain example.test --dev

run: $(STAMP) $(DEV)/appliance.toml
	@echo "Development instance in $(DEV); accounts (also in $(DEV)/demo-accounts.json):"
	@cat $(DEV)/demo-accounts.json
	@echo "Mail clients: SMTP 127.0.0.1:2587 (STARTTLS) or 2465 (TLS), IMAP 127.0.0.1:2143 (STARTTLS) or 2993 (TLS), POP3 2110/2995."
	@echo "Web panel: http://127.0.0.1:8080 (sign in as admin@example.test). Ctrl-C stops."
	@$(BIN)/appliance -c $(DEV)/appliance.toml migrate >/dev/null
	$(BIN)/appliance -c $(DEV)/appliance.toml up

# Debian packages the tests use; installed only when running as root and missing.
debs:
	@missing=""; for p in $(DEBIAN_TEST_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else echo "warning: missing Debian packages (run as root to install):$$missing"; fi; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .

test: debs $(STAMP) lint
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	@ls bench/*.py

clean-dev:
	rm -rf $(DEV)
