"""The default spec as package data: ``spec.path: builtin:default`` resolves inside the installed
package, so a non-editable install works from any directory; the wheel carries the spec."""

import shutil
import subprocess
import sys
import zipfile

import pytest

from rayalign.config import load_config, spec_dir
from rayalign.errors import ConfigError
from rayalign.spec import load_spec
from rayalign.stage1.conditioning import load_generation_templates


def test_builtin_default_is_the_default_and_loads_from_any_directory(repo, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no specs/ here
    cfg = load_config(None)
    assert cfg.spec.path == str(spec_dir("builtin:default")) and (spec_dir("builtin:default") / "spec.yaml").is_file()
    spec = load_spec(cfg.spec.path)
    assert spec.hash == load_spec(repo / "specs").hash and len(spec.categories) == 10
    assert load_generation_templates(cfg.spec.path).hash  # the templates travel with it


def test_the_package_spec_is_the_repo_spec_not_a_copy(repo):
    link = repo / "rayalign" / "specs"
    assert link.is_symlink() and link.resolve() == (repo / "specs").resolve()


def test_an_unknown_builtin_spec_is_refused_with_file_and_line(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("spec:\n  path: builtin:strict\n")
    with pytest.raises(ConfigError, match=r"c.yaml:2: spec.path: unknown built-in spec 'builtin:strict'"):
        load_config(config)


def test_the_wheel_carries_the_spec_and_a_plain_install_finds_it(repo, tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(repo / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("rayalign", "specs"):
        shutil.copytree(repo / name, source / name, symlinks=True, ignore=ignore)
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)]
    result = subprocess.run([*build, str(source)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = tmp_path.glob("rayalign-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"rayalign/specs/{p.relative_to(repo / 'specs').as_posix()}" for p in (repo / "specs").rglob("*")}
    expected = {n for n in expected if n.endswith((".yaml", ".md"))}
    assert expected and expected <= names, sorted(expected - names)

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)  # what `pip install` puts in site-packages
    check = (
        "import rayalign; from rayalign.config import load_config; from rayalign.spec import load_spec; "
        "cfg = load_config(None); print(rayalign.__file__); print(load_spec(cfg.spec.path).hash)"
    )
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    run = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    where, spec_hash = run.stdout.split()
    assert where.startswith(str(site)) and spec_hash == load_spec(repo / "specs").hash
