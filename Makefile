# Convenience targets; the scripts in .ci/ are the source of truth (they also run without make).
PREFIX ?= /opt/cni/bin
BIN := .build/release/ip-masq

.PHONY: build release install image test demo bench clean

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

demo:
	bash .ci/demo

bench:
	bash .ci/bench

clean:
	rm -rf .build
