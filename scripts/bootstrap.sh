#!/usr/bin/env bash
# Installs Node 24 and the pinned pnpm into ./.tools when the machine lacks them.
# No root needed; idempotent; a second run that finds everything in place is instant.
# Prints the one line to put the tools on PATH.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$repo/.tools"
bin="$tools/node_modules/.bin"
# The one pnpm version this repo runs with; must equal `packageManager` in package.json.
pnpm_version="$(sed -n 's/.*"packageManager": *"pnpm@\([^"]*\)".*/\1/p' "$repo/package.json")"
node_major=24
min_node="22.19.0"

version_ge() { # version_ge A B: A >= B (dotted numeric)
  [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]
}

current_node() { "$1" --version 2>/dev/null | sed 's/^v//'; }

need_node=1
if command -v node >/dev/null 2>&1 && version_ge "$(current_node node)" "$min_node"; then
  need_node=0
fi
if [ -x "$bin/node" ] && version_ge "$(current_node "$bin/node")" "$min_node"; then
  need_node=0
fi

need_pnpm=1
for p in "$bin/pnpm" "$(command -v pnpm 2>/dev/null || true)"; do
  if [ -n "$p" ] && [ -x "$p" ] && [ "$("$p" --version 2>/dev/null || true)" = "$pnpm_version" ]; then
    need_pnpm=0
    break
  fi
done

pkgs=()
[ "$need_node" = 1 ] && pkgs+=("node@$node_major")
[ "$need_pnpm" = 1 ] && pkgs+=("pnpm@$pnpm_version")

if [ "${#pkgs[@]}" -gt 0 ]; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "bootstrap: npm is required to install ${pkgs[*]} (install Node.js with npm first)" >&2
    exit 1
  fi
  echo "bootstrap: installing ${pkgs[*]} into $tools" >&2
  mkdir -p "$tools"
  # A package.json of its own keeps npm from walking up into the workspace root.
  [ -f "$tools/package.json" ] || echo '{ "name": "bus-tools", "private": true }' > "$tools/package.json"
  npm install --prefix "$tools" --no-audit --no-fund --loglevel=error "${pkgs[@]}" >&2
fi

if [ -d "$bin" ]; then
  echo "export PATH=\"$bin:\$PATH\""
else
  echo "# bootstrap: node $(node --version) and pnpm $pnpm_version already on PATH; nothing to add"
fi
