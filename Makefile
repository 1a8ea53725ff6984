# portcullis: the two commands a user needs are `make demo` and `make test`.
# Every target first runs scripts/setup.sh, which installs what is missing
# (Debian packages, npm packages) and does nothing when all is there.

SHELL := /bin/bash
SUITE ?=
NODE := node
TSX := $(NODE) --import=tsx

.PHONY: all setup build typecheck demo test bench clean

all: build

setup:
	@scripts/setup.sh

NATIVE := native/build/Release/portcullis.node
NATIVE_SRC := $(wildcard native/src/*.cc native/src/*.h) native/binding.gyp

# TypeScript to dist/ (the CLI runs from there) and the N-API addon.
build: setup $(NATIVE)
	@node_modules/.bin/tsc -p tsconfig.build.json

# node-gyp run directly must be told where Node's headers are (/usr/include/node).
$(NATIVE): $(NATIVE_SRC)
	@cd native && ../node_modules/.bin/node-gyp rebuild --nodedir=/usr --silent

typecheck: setup
	@node_modules/.bin/tsc --noEmit -p tsconfig.json

# The demo: the appliance live between namespaces it creates (see scripts/demo.sh).
demo: build
	@scripts/demo.sh

# Type-check, then every test; ends with the line `N passed, N failed`.
test: build typecheck
	@scripts/test.sh

# `make bench` runs every suite, `make bench SUITE=parse` one.
bench: build
	@$(NODE) --expose-gc --import=tsx bench/run.ts $(SUITE)

clean:
	rm -rf dist .tap native/build bench/results/*.json bench/c/*.bin bench/.cache

# The container image localhost/portcullis:latest from docker/Dockerfile (see
# docker/build.sh: ENGINE=docker to build with docker, BASE=... another base).
# Phony: docker/ is also a directory.
.PHONY: docker
docker: setup
	@docker/build.sh
