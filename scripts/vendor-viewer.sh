#!/usr/bin/env bash
# Refresh the viewer's vendored JavaScript libraries (circuitd/viewer/static/vendor/) from npm.
#
# Why vendored: `circuitd view` writes one self-contained HTML file that must open offline and
# under a Content-Security-Policy that forbids every fetch, so the libraries ship in the package.
# The versions are pinned here; bump one, run this script, and commit what it wrote.
#   cytoscape          graph drawing
#   cytoscape-dagre    layered (dagre) layout for cytoscape; its dist bundles @dagrejs/dagre and
#                      @dagrejs/graphlib, whose licences are copied too
#   uplot              small plotting library (faithfulness curves)
set -euo pipefail

CYTOSCAPE=3.35.0
CYTOSCAPE_DAGRE=4.0.1
DAGREJS_DAGRE=3.1.3      # bundled inside cytoscape-dagre's dist: licence only
DAGREJS_GRAPHLIB=4.0.6   # bundled inside cytoscape-dagre's dist: licence only
UPLOT=1.6.32

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$here/circuitd/viewer/static/vendor"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

unpack() {  # unpack NAME VERSION -> prints the unpacked package directory
    local name="$1" version="$2" tgz dir
    tgz="$(cd "$work" && npm pack --silent "$name@$version" | tail -n 1)"
    dir="$work/unpacked-${tgz%.tgz}"
    mkdir -p "$dir"
    tar -xzf "$work/$tgz" -C "$dir"
    echo "$dir/package"
}

licence() {  # licence NAME VERSION -> the package's licence identifier from npm
    npm view "$1@$2" license
}

rm -rf "$dest"
mkdir -p "$dest"
versions="$dest/VERSIONS"
printf '# name version licence (written by scripts/vendor-viewer.sh)\n' > "$versions"

copy() {  # copy NAME VERSION PREFIX FILE...: the files and the licence, one VERSIONS line
    local name="$1" version="$2" prefix="$3" pkg file
    shift 3
    pkg="$(unpack "$name" "$version")"
    for file in "$@"; do
        cp "$pkg/$file" "$dest/$(basename "$file")"
    done
    cp "$pkg/LICENSE" "$dest/LICENSE.$prefix"
    printf '%s %s %s\n' "$name" "$version" "$(licence "$name" "$version")" >> "$versions"
}

copy cytoscape "$CYTOSCAPE" cytoscape dist/cytoscape.min.js
copy cytoscape-dagre "$CYTOSCAPE_DAGRE" cytoscape-dagre dist/cytoscape-dagre.min.js
copy @dagrejs/dagre "$DAGREJS_DAGRE" dagrejs-dagre
copy @dagrejs/graphlib "$DAGREJS_GRAPHLIB" dagrejs-graphlib
copy uplot "$UPLOT" uplot dist/uPlot.iife.min.js dist/uPlot.min.css

echo "vendored into $dest:"
ls -l "$dest"
du -ch "$dest"/* | tail -n 1
