# Convenience targets; the scripts in .ci/ are the source of truth (they also run without make).
PREFIX ?= /opt/cni/bin
BIN := .build/release/ip-masq

.PHONY: build release install image test unit lint demo bench clean

build:
	swift build

release:
	bash .ci/setup
	swift build -c release --static-swift-stdlib

install: release
	install -d $(DESTDIR)$(PREFIX)
	install -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/ip-masq

image:
	bash .ci/image

test:
	bash .ci/test

# The root-free unit tests, as any user, without installing anything (needs libjansson-dev and libyaml-dev, which
# `bash .ci/setup` installs once).
unit:
	swift test --filter UnitTests

# Style as .swift-format says (120 columns); `swift format --in-place --recursive Sources Tests Package.swift` fixes
# most of what it reports.
lint:
	bash .ci/lint

demo:
	bash .ci/demo

bench:
	bash .ci/bench

# Every scratch directory the scripts in .ci/ write: SwiftPM's (.build, with the image, bench, runtime-tier and manifest
# virtualenv under it), the ASan build of .ci/test, and the fuzzing build and corpus of .ci/fuzz.
clean:
	rm -rf .build .build-asan .build-fuzz $(IPMASQ_SCRATCH) $(FUZZ_SCRATCH)
