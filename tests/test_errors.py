"""Bad input: every problem is exit code 2 and exactly one line on stderr,
``klpcc: error: PATCH[:LINE]: [FILE: ]what is wrong``, with no traceback; and
``compile`` leaves nothing behind when it fails.

The broken inputs live in fixtures/broken/ (see its README)."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from klpcc.cli import main

from .helpers import klpcc, write_tree

ROOT = Path(__file__).resolve().parent.parent
BROKEN = ROOT / "fixtures" / "broken"
SRC = BROKEN / "src"
PATCHES = BROKEN / "patches"
SERIES = BROKEN / "series"
GOOD = [PATCHES / "01-inc-saturate.patch", PATCHES / "02-util-min.patch"]


def invoke(*args: str | Path):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_error(r) -> str:
    """The single error line of a run that must fail on bad input."""
    out = r.stdout
    err = r.stderr
    assert "Traceback" not in out + err
    assert r.exit_code == 2, f"exit code {r.exit_code}\nstdout: {out}\nstderr: {err}"
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("klpcc: error: "), lines[0]
    return lines[0]


def assert_names(msg: str, patch: str | Path, lines: range | list[int] | None = None,
                 *needles: str) -> None:
    """``msg`` names ``patch`` (and one of ``lines`` of it, as PATCH:LINE:) and every needle."""
    patch = str(patch)
    assert patch in msg, f"{patch!r} not named in: {msg}"
    if lines is not None:
        m = re.search(re.escape(patch) + r":(\d+):", msg)
        assert m, f"no line of {patch} named in: {msg}"
        assert int(m.group(1)) in lines, f"line {m.group(1)} not in {lines}: {msg}"
    for n in needles:
        assert n in msg, f"{n!r} not named in: {msg}"


def both_commands(tmp_path: Path, *args: str | Path, check=None) -> list[str]:
    """Run ``analyze`` and ``compile`` with the same arguments; both must fail in the
    same way, and ``compile`` must leave its output's parent directory as it was."""
    msgs = [one_error(invoke("analyze", *args))]
    parent = tmp_path / "out"
    parent.mkdir(exist_ok=True)
    r = invoke("compile", *args, "-o", parent / "bundle")
    msgs.append(one_error(r))
    assert sorted(p.name for p in parent.iterdir()) == [], "compile left files behind"
    assert msgs[0] == msgs[1]
    if check:
        for m in msgs:
            check(m)
    return msgs


# --------------------------------------------------------------------------- broken patches

# (patch, lines of it the message may point at, what else it must name)
BROKEN_PATCHES = [
    # hunk problems point at the hunk's @@ line
    ("context-mismatch.patch", [4], ["counter.c", "hunk #1"]),
    # file problems point at the file's diff header (diff --git .. +++)
    ("missing-file.patch", range(1, 4), ["nosuch.c"]),
    ("dotdot.patch", range(1, 4), ["../outside.c"]),
    ("absolute.patch", range(1, 3), ["/usr/src/app/util.c"]),
    ("git-binary.patch", range(10, 14), ["logo.png"]),
    ("binary-differ.patch", range(10, 13), ["logo.png"]),
    ("create-existing.patch", range(1, 5), ["util.c"]),
    ("delete-differs.patch", range(1, 6), ["util.c"]),
    ("delete-partial.patch", range(1, 6), ["util.c"]),
    # line counts that do not match the hunk: somewhere in the hunk
    ("malformed-long.patch", range(4, 10), ["util.c"]),
    ("malformed-short.patch", range(4, 10), ["util.c"]),
    # nothing to point at
    ("no-diff.patch", None, []),
]


@pytest.mark.parametrize(("name", "lines", "needles"), BROKEN_PATCHES,
                         ids=[c[0] for c in BROKEN_PATCHES])
def test_broken_patch(tmp_path, name, lines, needles):
    patch = PATCHES / name
    both_commands(tmp_path, patch, "--source", SRC,
                  check=lambda m: assert_names(m, patch, lines, *needles))


@pytest.mark.parametrize(("name", "lines", "needles"), BROKEN_PATCHES[:3],
                         ids=[c[0] for c in BROKEN_PATCHES[:3]])
def test_broken_patch_after_good_ones_is_still_located(tmp_path, name, lines, needles):
    patch = PATCHES / name
    both_commands(tmp_path, *GOOD, patch, "--source", SRC,
                  check=lambda m: assert_names(m, patch, lines, *needles))


def test_absolute_path_with_an_explicit_p0(tmp_path):
    d = tmp_path / "q"
    d.mkdir()
    shutil.copy(PATCHES / "absolute.patch", d / "absolute.patch")
    (d / "series").write_text("absolute.patch -p0\n")
    both_commands(tmp_path, d, "--source", SRC,
                  check=lambda m: assert_names(m, d / "absolute.patch", range(1, 3), "/usr/src/app/util.c"))


def test_absolute_path_in_a_git_diff(tmp_path):
    patch = tmp_path / "abs-git.patch"
    patch.write_text("diff --git a//etc/motd b//etc/motd\n--- a//etc/motd\n+++ b//etc/motd\n"
                     "@@ -1 +1 @@\n-hello\n+owned\n")
    both_commands(tmp_path, patch, "--source", SRC,
                  check=lambda m: assert_names(m, patch, range(1, 4), "/etc/motd"))


def test_empty_patch_file_is_an_empty_release_with_a_warning(tmp_path):
    # quilt and git accept empty patches (an empty commit): a release that changes
    # nothing, said so on stderr
    patch = tmp_path / "empty.patch"
    patch.write_bytes(b"")
    r = klpcc("analyze", str(GOOD[0]), str(patch), "--source", str(SRC))
    assert r.returncode == 0, r.stderr
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("klpcc: warning:")]
    assert len(warnings) == 1 and str(patch) in warnings[0] and "empty" in warnings[0]


def test_patch_with_text_but_no_diff_is_an_error(tmp_path):
    patch = tmp_path / "notes.patch"
    patch.write_text("Just some notes, no diff here.\n")
    both_commands(tmp_path, patch, "--source", SRC, check=lambda m: assert_names(m, patch))


def test_missing_patch_file(tmp_path):
    patch = tmp_path / "nope.patch"
    both_commands(tmp_path, GOOD[0], patch, "--source", SRC, check=lambda m: assert_names(m, patch))


def test_c_file_with_nul_bytes_in_the_base(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(SRC, src)
    (src / "util.c").write_bytes(b"int util_max(int a, int b)\n{\n\treturn a > b ? a : b;\n}\n\0\0\n")
    patch = PATCHES / "02-util-min.patch"
    both_commands(tmp_path, patch, "--source", src, check=lambda m: assert_names(m, patch, None, "util.c"))


def test_c_file_with_nul_bytes_in_the_patch(tmp_path):
    patch = tmp_path / "nul.patch"
    patch.write_bytes(b"diff --git a/new.c b/new.c\nnew file mode 100644\n--- /dev/null\n+++ b/new.c\n"
                      b"@@ -0,0 +1,2 @@\n+int x;\n+int y\0;\n")
    both_commands(tmp_path, patch, "--source", SRC,
                  check=lambda m: assert_names(m, patch, range(1, 8), "new.c"))


# --------------------------------------------------------------------------- broken series


@pytest.mark.parametrize("what", ["empty", "comments-only"])
def test_empty_series(tmp_path, what):
    series = SERIES / what / "series"
    both_commands(tmp_path, series, "--source", SRC, check=lambda m: assert_names(m, series))
    both_commands(tmp_path, SERIES / what, "--source", SRC, check=lambda m: assert_names(m, series))


def test_series_naming_a_missing_patch(tmp_path):
    series = SERIES / "missing-patch" / "series"
    both_commands(tmp_path, series, "--source", SRC,
                  check=lambda m: assert_names(m, series, [3], "02-util-max-ties.patch"))


def test_a_later_broken_patch_fails_an_earlier_release(tmp_path):
    """A series is one unit: a release engineer building release 1 of a series whose
    release 3 does not apply wants to hear about it now, not when release 3 ships."""
    series = SERIES / "later-broken"

    def check(m: str) -> None:
        assert re.search(r"\bcontext-mismatch\.patch:4: counter\.c: ", m), m

    for release in ("1", "01-inc-saturate", "2"):
        both_commands(tmp_path, series, "--source", SRC, "--release", release, check=check)
    # the same release builds when the broken patch is not in the series
    ok = tmp_path / "ok"
    r = invoke("compile", *GOOD, "--source", SRC, "--release", "1", "-o", ok)
    assert r.exit_code == 0, r.output
    assert (ok / "manifest.json").is_file()


@pytest.mark.parametrize(("option", "ref"), [
    ("--release", "03-nope"),
    ("--release", "0"),
    ("--release", "3"),
    ("--release", "-1"),
    ("--from", "7"),
    ("--from", "01-inc"),
])
def test_unknown_release(tmp_path, option, ref):
    def check(m: str) -> None:
        assert ref in m
        assert "01-inc-saturate" in m and "02-util-min" in m  # what there is to choose from

    if option == "--from":
        one_error_msg = one_error(invoke("analyze", *GOOD, "--source", SRC, option, ref))
        check(one_error_msg)
    else:
        both_commands(tmp_path, *GOOD, "--source", SRC, option, ref, check=check)


def test_missing_source(tmp_path):
    both_commands(tmp_path, *GOOD, check=lambda m: assert_names(m, "--source"))


def test_source_is_not_a_directory(tmp_path):
    both_commands(tmp_path, *GOOD, "--source", SRC / "util.c",
                  check=lambda m: assert_names(m, SRC / "util.c"))


def test_no_series_at_all(tmp_path):
    both_commands(tmp_path, "--source", SRC)


# --------------------------------------------------------------------------- git ranges


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=T", "-c", "user.email=t@example.com",
         "-c", "commit.gpgsign=false", *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo(tmp_path) -> Path:
    repo = tmp_path / "repo"
    write_tree(repo, {"util.c": (SRC / "util.c").read_text()})
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "base")
    _git(repo, "tag", "base")
    (repo / "util.c").write_text((SRC / "util.c").read_text().replace("a > b", "a >= b"))
    _git(repo, "commit", "-qam", "util: ties")
    return repo


def test_git_repository_that_does_not_exist(tmp_path):
    nope = tmp_path / "nope"
    both_commands(tmp_path, "--git", nope, "base..main", check=lambda m: assert_names(m, nope))


def test_git_directory_that_is_not_a_repository(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    both_commands(tmp_path, "--git", plain, "base..main", check=lambda m: assert_names(m, plain))


@pytest.mark.parametrize("rng", ["base..nosuch", "nosuch..main", "base..main~5"])
def test_git_range_with_an_unknown_revision(tmp_path, repo, rng):
    bad = [part for part in rng.split("..") if part not in ("base", "main")][0]
    both_commands(tmp_path, "--git", repo, rng, check=lambda m: assert_names(m, repo, None, bad))


@pytest.mark.parametrize("rng", ["main", "base...main", "..main", "base..", "a..b..c"])
def test_git_range_that_is_not_a_range(tmp_path, repo, rng):
    both_commands(tmp_path, "--git", repo, rng, check=lambda m: assert_names(m, repo, None, rng))


@pytest.mark.parametrize("rng", ["base..base", "main..base"])
def test_git_range_holding_no_commits(tmp_path, repo, rng):
    both_commands(tmp_path, "--git", repo, rng, check=lambda m: assert_names(m, repo, None, rng))


def test_git_range_and_patch_files_together(tmp_path, repo):
    both_commands(tmp_path, GOOD[0], "--git", repo, "base..main")


# --------------------------------------------------------------------------- compile's output


def _tree(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture
def existing(tmp_path) -> Path:
    out = tmp_path / "out"
    # an earlier bundle (what --force may replace is known by its manifest's schema)
    write_tree(out / "bundle", {"keep.txt": "precious\n",
                                "manifest.json": '{"schema": "klpcc.manifest/2"}\n'})
    return out / "bundle"


def test_compile_refuses_an_existing_output_without_force(existing):
    before = _tree(existing)
    msg = one_error(invoke("compile", *GOOD, "--source", SRC, "-o", existing))
    assert str(existing) in msg and "--force" in msg
    assert _tree(existing) == before
    assert [p.name for p in existing.parent.iterdir()] == ["bundle"]


def test_compile_force_replaces_the_output_whole(existing):
    r = invoke("compile", *GOOD, "--source", SRC, "-o", existing, "--force")
    assert r.exit_code == 0, r.output
    listed = sorted(p.name for p in existing.iterdir())
    assert listed == ["base", "cumulative.diff", "manifest.json", "patches", "sources"]
    assert [p.name for p in existing.parent.iterdir()] == ["bundle"]  # no temp dirs left


def test_compile_force_that_fails_leaves_the_old_output_alone(existing):
    before = _tree(existing)
    msg = one_error(invoke("compile", PATCHES / "context-mismatch.patch", "--source", SRC,
                           "-o", existing, "--force"))
    assert_names(msg, PATCHES / "context-mismatch.patch", [4], "counter.c")
    assert _tree(existing) == before
    assert [p.name for p in existing.parent.iterdir()] == ["bundle"]


def test_compile_force_that_fails_while_swapping_restores_the_old_output(existing, monkeypatch):
    """The swap itself fails (a simulated I/O error moving the new bundle into place):
    the old bundle must come back and no temporary directory may stay behind."""
    real = os.rename

    def flaky(src, dst):
        moving_new_in = Path(src).parent == existing.parent and Path(src).name.startswith(".bundle.tmp")
        if Path(dst) == existing and moving_new_in:
            raise OSError(errno.EIO, "simulated I/O error", str(dst))
        return real(src, dst)

    before = _tree(existing)
    monkeypatch.setattr(os, "rename", flaky)
    r = invoke("compile", *GOOD, "--source", SRC, "-o", existing, "--force")
    monkeypatch.undo()
    one_error(r)
    assert _tree(existing) == before
    assert [p.name for p in existing.parent.iterdir()] == ["bundle"]


def test_compile_force_onto_a_file(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "bundle").write_text("not a directory\n")
    msg = one_error(invoke("compile", *GOOD, "--source", SRC, "-o", out / "bundle", "--force"))
    assert str(out / "bundle") in msg
    assert (out / "bundle").read_text() == "not a directory\n"
    assert [p.name for p in out.iterdir()] == ["bundle"]


def test_compile_into_a_missing_directory_creates_it(tmp_path):
    target = tmp_path / "no" / "such" / "bundle"
    r = invoke("compile", *GOOD, "--source", SRC, "-o", target)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in target.iterdir()) == ["base", "cumulative.diff", "manifest.json", "patches",
                                                        "sources"]


def test_failed_compile_into_a_missing_directory_creates_nothing(tmp_path):
    target = tmp_path / "no" / "such" / "bundle"
    one_error(invoke("compile", PATCHES / "context-mismatch.patch", "--source", SRC, "-o", target))
    assert list(tmp_path.iterdir()) == []


def test_compile_under_a_file_is_refused(tmp_path):
    (tmp_path / "plain").write_text("x")
    msg = one_error(invoke("compile", *GOOD, "--source", SRC, "-o", tmp_path / "plain" / "bundle"))
    assert "not a directory" in msg


# --------------------------------------------------------------------------- as a user runs it


def test_subprocess_context_mismatch(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    patch = PATCHES / "context-mismatch.patch"
    r = klpcc("compile", str(patch), "--source", str(SRC), "-o", str(out / "b"))
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    (line,) = r.stderr.splitlines()
    assert line.startswith(f"klpcc: error: {patch}:4: counter.c: ")
    assert list(out.iterdir()) == []


def test_subprocess_relative_paths_are_shown_as_given(tmp_path):
    r = klpcc("analyze", "patches/no-diff.patch", "--source", "src", cwd=BROKEN)
    assert r.returncode == 2
    assert r.stderr.splitlines() == [r.stderr.strip()]
    assert r.stderr.startswith("klpcc: error: patches/no-diff.patch: ")


def test_subprocess_bad_git_range(tmp_path, repo):
    r = klpcc("analyze", "--git", str(repo), "base..nosuch")
    assert r.returncode == 2
    (line,) = r.stderr.splitlines()
    assert line.startswith("klpcc: error: ") and "nosuch" in line
    assert "Traceback" not in r.stderr


# -- outputs never land on inputs --------------------------------------------------------


@pytest.fixture
def small(tmp_path) -> tuple[Path, Path]:
    from .helpers import make_series

    return make_series(tmp_path, {"x.c": "int f(void)\n{\n\treturn 1;\n}\n"},
                       [{"x.c": "int f(void)\n{\n\treturn 2;\n}\n"}])


@pytest.mark.parametrize("which", ["base", "patches", "both"])
def test_compile_force_never_replaces_what_it_reads(small, which):
    """-o naming the base tree, the series' directory or a directory holding both, with
    --force: refused, and every input left as it was."""
    patches, base = small
    target = {"base": base, "patches": patches, "both": base.parent}[which]
    before = _tree(base.parent)
    msg = one_error(invoke("compile", patches, "--source", base, "-o", target, "--force"))
    assert str(target) in msg
    assert _tree(base.parent) == before


def test_compile_force_replaces_only_what_klpcc_wrote(small, tmp_path):
    patches, base = small
    other = write_tree(tmp_path / "other", {"notes.txt": "mine\n"})
    msg = one_error(invoke("compile", patches, "--source", base, "-o", other, "--force"))
    assert "not a directory klpcc wrote" in msg and (other / "notes.txt").read_text() == "mine\n"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert invoke("compile", patches, "--source", base, "-o", empty, "--force").exit_code == 0
    assert (empty / "manifest.json").is_file()
    # the bundle just written is klpcc's: replaced again
    assert invoke("compile", patches, "--source", base, "-o", empty, "--force").exit_code == 0


def test_compile_force_never_replaces_a_directory_whose_manifest_is_not_klpccs(small, tmp_path):
    """A web extension's folder has a manifest.json too."""
    patches, base = small
    ext = write_tree(tmp_path / "ext", {"manifest.json": '{"manifest_version": 3}\n', "background.js": "x\n"})
    before = _tree(ext)
    assert "not a directory klpcc wrote" in one_error(invoke("compile", patches, "--source", base, "-o", ext,
                                                             "--force"))
    assert _tree(ext) == before


def test_compile_force_onto_a_bundle_it_reads_from_is_refused(small, tmp_path):
    """The series and base taken from an earlier bundle: that bundle is an input."""
    patches, base = small
    out = tmp_path / "out"
    assert invoke("compile", patches, "--source", base, "-o", out).exit_code == 0
    before = _tree(out)
    msg = one_error(invoke("compile", patches, "--source", out / "base", "-o", out, "--force"))
    assert str(out / "base") in msg and "reads" in msg
    assert _tree(out) == before


def test_compile_force_onto_the_git_repository_it_reads_is_refused(tmp_path):
    repo = write_tree(tmp_path / "repo", {"x.c": "int f(void)\n{\n\treturn 1;\n}\n"})

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                              check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "base")
    (repo / "x.c").write_text("int f(void)\n{\n\treturn 2;\n}\n")
    git("commit", "-qam", "fix")
    msg = one_error(invoke("compile", "--git", repo, "HEAD~1..HEAD", "-o", repo, "--force"))
    assert str(repo) in msg
    assert git("log", "--oneline").count("\n") == 1 and (repo / "x.c").is_file()


@pytest.mark.parametrize("command", ["lint", "report"])
@pytest.mark.parametrize("which", ["patch", "series", "base file"])
def test_lint_and_report_never_write_over_what_they_read(small, command, which):
    patches, base = small
    target = {"patch": next(patches.glob("*.patch")), "series": patches / "series",
              "base file": base / "x.c"}[which]
    before = _tree(base.parent)
    msg = one_error(invoke(command, patches, "--source", base, "-o", target))
    assert str(target) in msg and "reads" in msg
    assert _tree(base.parent) == before


def test_the_series_file_under_patches_is_an_input(tmp_path):
    """A directory given as the series may hold it as patches/series (quilt's layout)."""
    from .helpers import make_series

    patches, base = make_series(tmp_path / "q", {"x.c": "int f(void)\n{\n\treturn 1;\n}\n"},
                                [{"x.c": "int f(void)\n{\n\treturn 2;\n}\n"}])
    assert patches.name == "patches"
    before = (patches / "series").read_text()
    msg = one_error(invoke("lint", patches.parent, "--source", base, "-o", patches / "series"))
    assert "reads" in msg and (patches / "series").read_text() == before


def test_a_file_a_quilt_style_patch_touches_is_an_input(tmp_path):
    """'--- linux.orig/Makefile' / '+++ linux/Makefile' (quilt's own paths): the base's
    Makefile is read, whatever the prefixes."""
    base = write_tree(tmp_path / "base", {"Makefile": "obj-y += x.o\n", "x.c": "int x;\n"})
    s = write_tree(tmp_path / "s", {
        "1.patch": "--- linux.orig/Makefile\n+++ linux/Makefile\n@@ -1 +1,2 @@\n"
                   " obj-y += x.o\n+obj-y += y.o\n",
        "series": "1.patch\n"})
    msg = one_error(invoke("lint", s, "--source", base, "-o", base / "Makefile"))
    assert "reads" in msg and (base / "Makefile").read_text() == "obj-y += x.o\n"


def test_the_kernel_build_directory_lint_reads_is_an_input(small, tmp_path):
    patches, base = small
    kdir = write_tree(tmp_path / "kdir", {".config": "CONFIG_LIVEPATCH=y\n", "Makefile": "all:\n"})
    msg = one_error(invoke("lint", patches, "--source", base, "--kernel", kdir, "-o", kdir / ".config"))
    assert "reads" in msg and (kdir / ".config").read_text() == "CONFIG_LIVEPATCH=y\n"


def test_report_from_a_subdirectory_of_the_git_repository_it_reads(tmp_path):
    """--git . from a subdirectory: the page is written there (the work tree's files that
    are not inputs are anybody's), but never into the repository's store."""
    repo = write_tree(tmp_path / "repo", {"x.c": "int f(void)\n{\n\treturn 1;\n}\n", "docs/README": "x\n"})

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                       check=True, capture_output=True)

    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "base")
    (repo / "x.c").write_text("int f(void)\n{\n\treturn 2;\n}\n")
    git("commit", "-qam", "fix")
    r = klpcc("report", "--git", ".", "HEAD~1..HEAD", "-o", "report.html", cwd=repo / "docs")
    assert r.returncode == 0, r.stderr
    assert (repo / "docs" / "report.html").is_file()
    r = klpcc("lint", "--git", ".", "HEAD~1..HEAD", "-o", "../.git/lint.txt", cwd=repo / "docs")
    assert r.returncode == 2 and ".git" in r.stderr and not (repo / ".git" / "lint.txt").exists()


def test_lint_output_beside_its_inputs_is_written(small):
    """A new file in the series' directory, or a file of the base tree that is not C
    and that no patch touches (a report kept with the tree), is no input."""
    patches, base = small
    for target in (patches / "lint.txt", base / "lint.sarif"):
        for _ in range(2):  # and written again over the previous run's
            r = invoke("lint", patches, "--source", base, "--format", "sarif", "-o", target)
            assert r.exit_code == 0, r.output
            assert target.read_text().startswith("{")


def test_report_of_a_bundle_never_writes_into_it(small, tmp_path):
    patches, base = small
    out = tmp_path / "out"
    assert invoke("compile", patches, "--source", base, "-o", out).exit_code == 0
    before = _tree(out)
    one_error(invoke("report", out, "-o", out / "manifest.json"))
    one_error(invoke("report", out, "-o", out / "review.html"))
    assert _tree(out) == before


def test_an_output_that_is_a_link_to_an_input_replaces_the_link(small, tmp_path):
    """Writing replaces a link, not what it points to: the input stays."""
    patches, base = small
    link = tmp_path / "lint.txt"
    link.symlink_to(base / "x.c")
    before = _tree(base)
    r = invoke("lint", patches, "--source", base, "-o", link)
    assert r.exit_code == 0, r.output
    assert not link.is_symlink() and _tree(base) == before


def _plain_patch(*paths: str) -> str:
    """A patch without a/ b/ prefixes changing 'return 1' to 'return 2' in each path
    (whose function is named after the file)."""
    return "".join(f"--- {p}\n+++ {p}\n@@ -1,4 +1,4 @@\n int {_stem(p)}(void)\n {{\n-\treturn 1;\n"
                   f"+\treturn 2;\n }}\n" for p in paths)


def _stem(path: str) -> str:
    return path.rsplit("/", 1)[-1].split(".")[0]


def test_a_strip_level_both_readings_of_which_exist_is_asked_for(tmp_path):
    """'--- lib/foo.c' where the base has lib/foo.c (-p0) and foo.c (-p1): quilt would
    take -p1, a plain 'patch' -p0; klpcc asks, and takes what the series file says."""
    body = "int foo(void)\n{\n\treturn 1;\n}\n"
    base = write_tree(tmp_path / "base", {"foo.c": body, "lib/foo.c": body})
    s = write_tree(tmp_path / "s", {"1.patch": _plain_patch("lib/foo.c"), "series": "1.patch\n"})
    msg = one_error(invoke("analyze", s, "--source", base))
    assert_names(msg, s / "1.patch", [1, 2], "lib/foo.c", "foo.c", "-p0", "-p1")
    for level, where in (("-p0", "lib/foo.c"), ("-p1", "foo.c")):
        (s / "series").write_text(f"1.patch {level}\n")
        r = invoke("analyze", s, "--source", base, "--format", "json")
        assert r.exit_code == 0, r.output
        assert [f["file"] for f in json.loads(r.stdout)["functions"]] == [where]


def test_a_strip_level_another_file_of_the_patch_settles_is_taken(tmp_path):
    body = "int {}(void)\n{{\n\treturn 1;\n}}\n".format
    base = write_tree(tmp_path / "base",
                      {"foo.c": body("foo"), "lib/foo.c": body("foo"), "bar.c": body("bar")})
    s = write_tree(tmp_path / "s", {"1.patch": _plain_patch("lib/foo.c", "lib/bar.c"), "series": "1.patch\n"})
    r = invoke("analyze", s, "--source", base, "--format", "json")
    assert r.exit_code == 0, r.output  # only bar.c (-p1) exists for the second file: -p1 for both
    assert sorted(f["file"] for f in json.loads(r.stdout)["functions"]) == ["bar.c", "foo.c"]


def _one_file_patch(hunks: str) -> str:
    return "--- a/x.c\n+++ b/x.c\n" + hunks


@pytest.mark.parametrize("header", ["@@  -1,4 +1,4 @@", "@@ -1,4 +1,4  @@", "@@ -1,4 +1,4 @@@"])
def test_a_quoted_patch_line_keeps_its_spaces(tmp_path, header):
    """A hunk header one space off is quoted as it is: squeezing its spaces would show a
    valid header as the malformed one."""
    base = write_tree(tmp_path / "base", {"x.c": "int foo(void)\n{\n\treturn 1;\n}\n"})
    patch = tmp_path / "1.patch"
    patch.write_text(_one_file_patch(f"{header}\n int foo(void)\n {{\n-\treturn 1;\n+\treturn 2;\n }}\n"))
    msg = one_error(invoke("analyze", patch, "--source", base))
    assert repr(header) in msg, msg


def test_bytes_that_are_not_utf8_are_shown_as_escapes(tmp_path):
    base = write_tree(tmp_path / "base", {"x.c": "int foo(void)\n{\n\treturn 1;\n}\n"})
    patch = tmp_path / "1.patch"
    patch.write_bytes(_one_file_patch("@@ -1,4 +1,4 @@\n int foo(void)\n {\n-\treturn 1;  /* \xe9 */\n"
                                      "+\treturn 2;\n }\n").encode("latin-1"))
    msg = one_error(invoke("analyze", patch, "--source", base))
    assert "line 3 is '\\treturn 1;', the patch expects '\\treturn 1;  /* \\xe9 */'" in msg, msg
    assert "\ufffd" not in msg


def test_hunks_out_of_order_are_named_as_such(tmp_path):
    body = "".join(f"int f{i}(void)\n{{\n\treturn {i};\n}}\n\n" for i in range(6))
    base = write_tree(tmp_path / "base", {"x.c": body})
    patch = tmp_path / "1.patch"
    patch.write_text(_one_file_patch(
        "@@ -22,4 +22,4 @@\n int f4(void)\n {\n-\treturn 4;\n+\treturn 40;\n }\n"
        "@@ -2,4 +2,4 @@\n {\n-\treturn 0;\n+\treturn 10;\n }\n \n"))
    msg = one_error(invoke("analyze", patch, "--source", base))
    assert_names(msg, patch, [9], "x.c", "hunk #2", "before hunk #1", "order")  # its @@ line


@pytest.mark.parametrize("value", ["abc", "0", "-5", "nan", "inf"])
def test_a_bad_file_size_limit_is_refused_not_ignored(value):
    r = CliRunner().invoke(main, ["analyze", *map(str, GOOD), "--source", str(SRC)],
                           env={"KLPCC_MAX_FILE_MB": value})
    assert "KLPCC_MAX_FILE_MB" in one_error(r) and repr(value) in r.stderr


def test_an_empty_source_path_is_refused():
    assert "empty path" in one_error(invoke("analyze", *GOOD, "--source", ""))


def test_quoted_lines_show_undecodable_bytes_and_only_them_as_byte_escapes():
    from klpcc.errors import quoted

    assert quoted("a\udce9b") == "'a\\xe9b'"  # the byte 0xe9, carried as a lone surrogate
    assert quoted('printf("\\udc80");') == repr('printf("\\udc80");')  # text that spells an escape
    assert quoted("x\\\udce9") == "'x\\\\\\xe9'"  # a backslash, then the byte
    assert quoted("a  b\t") == "'a  b\\t'"  # spaces as they are


@pytest.mark.parametrize("tail", ["diff -ruN a/y.c b/y.c", "diff -ruN a/y.c b/y.c\n",
                                  "diff -ruN a/y.c b/y.c\n\n", "Index: y.c\n",
                                  "diff -u a/y.c b/y.c\ndiff -u a/z.c b/z.c\n", "@", "Signed-off"])
def test_a_file_header_cut_short_is_refused(tmp_path, tail):
    """A patch cut right after a file's 'diff' (or 'Index:') line, or in the middle of
    the line after a file diff (the first '@' of a hunk header): what follows is lost,
    so the patch is refused, not read as the files before it."""
    base = write_tree(tmp_path / "base", {"x.c": "int foo(void)\n{\n\treturn 1;\n}\n", "y.c": "int y;\n"})
    patch = tmp_path / "1.patch"
    patch.write_text(_one_file_patch("@@ -1,4 +1,4 @@\n int foo(void)\n {\n-\treturn 1;\n+\treturn 2;\n }\n")
                     + tail)
    msg = one_error(invoke("analyze", patch, "--source", base))
    assert_names(msg, patch, [9], "cut short")
