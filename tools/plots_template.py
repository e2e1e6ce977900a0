"""Build DVC's offline plots page: vega, vega-lite and vega-embed inlined into one HTML template.

DVC's default page loads these from a CDN and renders blank without network.  This fetches the
pinned versions from the npm registry (`npm pack`), inlines their minified builds, and writes the
template that `.dvc/config` names (`plots.html_template`), so `dvc plots show` and `dvc plots diff`
work offline.  Run by `make setup`:

    python tools/plots_template.py .dvc/plots/offline.html
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

# Pinned: the page must not change under a user between two runs.
PACKAGES = {"vega": "5.33.1", "vega-lite": "5.23.0", "vega-embed": "6.29.0"}

PAGE = """<!DOCTYPE html>
<html>
<head>
  <meta charset="utf-8">
  <title>circuitflow: DVC plots</title>
{scripts}
  <style>body {{ font-family: sans-serif; }} table {{ border-spacing: 15px; }}</style>
</head>
<body>
  {{plot_divs}}
</body>
</html>
"""


def build(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        specs = [f"{name}@{version}" for name, version in PACKAGES.items()]
        subprocess.run(["npm", "pack", "--silent", *specs], cwd=tmp, check=True, stdout=subprocess.DEVNULL)
        scripts = []
        for name, version in PACKAGES.items():
            with tarfile.open(Path(tmp) / f"{name}-{version}.tgz") as archive:
                code = archive.extractfile(f"package/build/{name}.min.js").read().decode()
            code = code.replace("</script", "<\\/script")  # keep the inlined code from closing its tag
            scripts.append(f"  <!-- {name} {version}, inlined from the npm registry -->\n  <script>{code}</script>")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(PAGE.format(scripts="\n".join(scripts)))


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ".dvc/plots/offline.html")
    if out.exists():
        return 0
    try:
        build(out)
    except (OSError, subprocess.CalledProcessError) as error:
        print(f"Could not build the offline DVC plots page ({error}); `dvc plots show` will need network. Install node/npm and rerun `make setup`.", file=sys.stderr)
        return 0  # the pipeline itself does not need it
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
