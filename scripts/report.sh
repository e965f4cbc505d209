#!/usr/bin/env bash
# Makes docs/report.pdf, the project report (4-6 A4 pages), from the Markdown docs as they are
# now: scripts/report.py fills docs/report/report.html with their sections, headless Chromium
# prints it, pdfinfo checks the page count. Rerun it whenever the docs' numbers change.
#
#   scripts/report.sh                 docs/report.pdf
#   REPORT_PNG=DIR scripts/report.sh  also every page as DIR/page-N.png (50 dpi), to look at
#
# Needs: python3 with Markdown (installed with pip when missing), chromium (apt-get install
# chromium), pdfinfo and pdftoppm (apt-get install poppler-utils). Fails loudly without them.
set -euo pipefail
cd "$(dirname "$0")/.."
out=docs/report.pdf
chromium=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}

python3 -c 'import markdown' 2>/dev/null || pip install -q 'markdown>=3.4,<4' \
  || { echo "report.sh: Python-Markdown is missing and pip could not install it (pip install markdown)" >&2; exit 1; }
python3 -c 'import markdown' || { echo "report.sh: python3 still cannot import markdown" >&2; exit 1; }
[ -n "$chromium" ] && [ -x "$chromium" ] || { echo "report.sh: chromium is missing (apt-get install chromium)" >&2; exit 1; }
command -v pdfinfo >/dev/null || { echo "report.sh: pdfinfo is missing (apt-get install poppler-utils)" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 scripts/report.py "$tmp/report.html"
# A profile of its own: a Chromium the user has open keeps its default profile locked.
"$chromium" --headless --no-sandbox --disable-gpu --no-first-run --disable-background-networking \
  --user-data-dir="$tmp/profile" --no-pdf-header-footer --print-to-pdf="$out" \
  "file://$tmp/report.html" 2> "$tmp/chromium.log" \
  || { cat "$tmp/chromium.log" >&2; echo "report.sh: chromium could not print the report" >&2; exit 1; }
[ -s "$out" ] || { cat "$tmp/chromium.log" >&2; echo "report.sh: chromium wrote no PDF" >&2; exit 1; }

pages=$(pdfinfo "$out" | awk '/^Pages:/ {print $2}')
echo "$out: $pages pages, $(du -k "$out" | cut -f1) KiB"
if [ -n "${REPORT_PNG:-}" ]; then
  command -v pdftoppm >/dev/null || { echo "report.sh: pdftoppm is missing (apt-get install poppler-utils)" >&2; exit 1; }
  mkdir -p "$REPORT_PNG"
  pdftoppm -png -r 50 "$out" "$REPORT_PNG/page"
  echo "pages as PNG in $REPORT_PNG"
fi
if [ "$pages" -lt 4 ] || [ "$pages" -gt 6 ]; then
  echo "report.sh: the report has $pages pages, not 4-6: select fewer tables in docs/report/report.html" >&2
  exit 1
fi
