#!/usr/bin/env bash
# The test set-up's one system package: headless Chromium, for the report page's browser test
# (tests/test_report.py). Installed from the distribution's packages where it is missing and this
# user may install (root, or password-less sudo, with apt-get); otherwise it says why, and that test
# is skipped with the reason. Never fails the set-up.
set -u
for name in chromium chromium-browser google-chrome google-chrome-stable; do
  command -v "$name" >/dev/null 2>&1 && exit 0
done
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_chromium: no apt-get here; install Chromium yourself to run the report's browser test (it is skipped)" >&2
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then sudo=""; elif sudo -n true 2>/dev/null; then sudo="sudo -n"; else
  echo "install_chromium: not root and no password-less sudo; the report's browser test is skipped" >&2
  exit 0
fi
echo "install_chromium: installing chromium (Debian's package) for the report's browser test" >&2
if ! { $sudo apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 || \
       { $sudo apt-get update -q >/dev/null 2>&1 && $sudo apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1; }; }; then
  echo "install_chromium: apt-get could not install chromium; the report's browser test is skipped" >&2
fi
exit 0
