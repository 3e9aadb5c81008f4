#!/usr/bin/env bash
# Installs ct2pet-node into the current Python environment.
#   scripts/install.sh          the node
#   scripts/install.sh --test   the node, the test tools and the DICOM peers the tests talk to
set -euo pipefail
cd "$(dirname "$0")/.."

with_tests=0
[ "${1:-}" = "--test" ] && with_tests=1

if [ "$with_tests" = 1 ]; then
    # Real peers: dcmtk (storescu/storescp/echoscu and codecs), Orthanc (a PACS, DICOMweb too), dicom3tools (dciodvfy);
    # Chromium and its driver look at the dashboard (tests/integration/test_dashboard_browser.py).
    missing=()
    for tool in storescu dcmcjpls Orthanc dciodvfy unshare ip chromium chromedriver; do
        command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
    done
    # Orthanc's DICOMweb plugin: the PACS the DICOMweb destination, source and receiver tests talk to.
    [ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || missing+=(orthanc-dicomweb)
    if [ ${#missing[@]} -gt 0 ]; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends dcmtk orthanc orthanc-dicomweb dicom3tools iproute2 util-linux \
            chromium chromium-driver >/dev/null
    fi
fi

# torch first and pinned: a bare "torch" requirement would pull the CUDA build and
# gigabytes of packages; pyproject keeps a range so a CUDA install also satisfies it.
python3 -m pip install -q "torch==2.13.0" 2>/dev/null || python3 -m pip install -q "torch>=2.2,<3"
if [ "$with_tests" = 1 ]; then
    python3 -m pip install -q -e ".[test]"
else
    python3 -m pip install -q -e .
fi
