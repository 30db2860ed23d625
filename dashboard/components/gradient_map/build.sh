#!/bin/sh
# Rebuild frontend/regl-scatterplot.min.js (committed, so installing poisonlens needs no node):
# regl-scatterplot and its dependencies bundled by esbuild into one IIFE that sets
# window.createScatterplot, and their licence notices into frontend/THIRD_PARTY_LICENSES.txt.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$here/package.json" "$work/"
cd "$work"
npm install --no-audit --no-fund --ignore-scripts=false >/dev/null
printf "import createScatterplot from 'regl-scatterplot';\nwindow.createScatterplot = createScatterplot;\n" > entry.js
./node_modules/.bin/esbuild entry.js --bundle --minify --format=iife --target=es2020 \
    --outfile="$here/frontend/regl-scatterplot.min.js"
{
  echo "frontend/regl-scatterplot.min.js bundles these packages (npm), under their licences:"
  for pkg in regl-scatterplot regl pub-sub-es dom-2d-camera camera-2d-simple gl-matrix regl-line earcut @flekschas/utils; do
    version=$(node -p "require('./node_modules/$pkg/package.json').version")
    echo; echo "==== $pkg $version ===="
    cat "node_modules/$pkg/LICENSE"* 2>/dev/null || node -p "'license: ' + require('./node_modules/$pkg/package.json').license"
  done
} > "$here/frontend/THIRD_PARTY_LICENSES.txt"
