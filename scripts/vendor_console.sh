#!/usr/bin/env bash
# Re-vendors the console's front-end libraries from the npm registry at the exact versions below:
#   scripts/vendor_console.sh
# The files are committed under seekserve/console/vendor/ (unmodified, with their licences), so
# neither installing nor serving seekserve runs npm or fetches anything. Run this only to upgrade
# a library: change its version here, run it, and commit the result with VENDOR.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# package@version  file in the package -> file under vendor/<package>/
LIBRARIES=(
    "preact@11.2.0 dist/preact.mjs:preact.mjs LICENSE:LICENSE"
    "htm@3.1.1 dist/htm.mjs:htm.mjs LICENSE:LICENSE"
    "uplot@1.6.32 dist/uPlot.esm.js:uPlot.esm.js dist/uPlot.min.css:uPlot.min.css LICENSE:LICENSE"
)

command -v npm >/dev/null || { echo "vendor_console.sh: needs npm" >&2; exit 1; }
out=seekserve/console/vendor
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
{
    echo "# Vendored front-end libraries"
    echo
    echo "Copied unmodified from the npm registry by \`scripts/vendor_console.sh\`; do not edit."
    echo
    echo "| package | version | licence | files | npm integrity |"
    echo "|---|---|---|---|---|"
} >"$tmp/VENDOR.md"
for entry in "${LIBRARIES[@]}"; do
    read -r spec files <<<"$entry"
    name="${spec%@*}"
    version="${spec#*@}"
    # npm pack checks the tarball against the registry's integrity hash.
    (cd "$tmp" && npm pack --silent "$spec" >/dev/null)
    mkdir -p "$tmp/$name"
    tar xzf "$tmp/$name-$version.tgz" -C "$tmp/$name"
    rm -rf "${out:?}/$name"
    mkdir -p "$out/$name"
    listed=()
    for pair in $files; do
        cp "$tmp/$name/package/${pair%%:*}" "$out/$name/${pair#*:}"
        listed+=("${pair#*:}")
    done
    integrity="$(npm view "$spec" dist.integrity)"
    license="$(npm view "$spec" license)"
    echo "| $name | $version | $license | ${listed[*]} | \`$integrity\` |" >>"$tmp/VENDOR.md"
done
cp "$tmp/VENDOR.md" "$out/VENDOR.md"
echo "vendored into $out:"
cat "$out/VENDOR.md"
