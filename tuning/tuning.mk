# Host tuning targets for ringlb; the main Makefile pulls them in with `-include tuning/tuning.mk`.
#
#   make tune-apply PROFILE=10k|100k|1m   as root: install and load the profile, the limits
#                                         and the systemd drop-in (tuning/README.md)
#   make tune-apply PROFILE=1m DESTDIR=/tmp/stage
#                                         stage the same files under DESTDIR, load nothing
#   make tune-check                       ringlb check --host against TUNE_CONFIG

TUNING_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
TUNE_PROFILES := 10k 100k 1m
PROFILE ?= 10k
TUNE_CONFIG ?= conf/ringlb.toml
RINGLB ?= cargo run --quiet --release --
DESTDIR ?=

.PHONY: tune-apply tune-check

tune-apply:
	@case " $(TUNE_PROFILES) " in *" $(PROFILE) "*) ;; \
	  *) echo "tune-apply: PROFILE must be one of: $(TUNE_PROFILES)" >&2; exit 2 ;; esac
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" != 0 ]; then \
	  echo "tune-apply: run as root (it writes /etc and loads sysctls), or set DESTDIR" >&2; exit 2; fi
	install -D -m 0644 $(TUNING_DIR)/$(PROFILE).conf $(DESTDIR)/etc/sysctl.d/60-ringlb.conf
	install -D -m 0644 $(TUNING_DIR)/conntrack/$(PROFILE).conf \
	  $(DESTDIR)/etc/sysctl.d/61-ringlb-conntrack.conf
	install -D -m 0644 $(TUNING_DIR)/conntrack/90-ringlb-conntrack.rules \
	  $(DESTDIR)/etc/udev/rules.d/90-ringlb-conntrack.rules
	install -D -m 0644 $(TUNING_DIR)/limits.d/ringlb.conf $(DESTDIR)/etc/security/limits.d/ringlb.conf
	install -D -m 0644 $(TUNING_DIR)/systemd/ringlb.service.d/limits.conf \
	  $(DESTDIR)/etc/systemd/system/ringlb.service.d/limits.conf
	@if [ -n "$(DESTDIR)" ]; then echo "tune-apply: staged under $(DESTDIR), nothing loaded"; exit 0; fi; \
	set -e; \
	sysctl -p /etc/sysctl.d/60-ringlb.conf; \
	if [ -e /proc/sys/net/netfilter/nf_conntrack_max ]; then \
	  sysctl -p /etc/sysctl.d/61-ringlb-conntrack.conf; \
	else \
	  echo "tune-apply: nf_conntrack not loaded; the udev rule applies its settings when it is"; \
	fi; \
	if [ -d /run/systemd/system ]; then \
	  systemctl daemon-reload; \
	  udevadm control --reload; \
	  echo "tune-apply: restart ringlb for the new limits: systemctl restart ringlb"; \
	fi

tune-check:
	$(RINGLB) check --host -c $(TUNE_CONFIG)
