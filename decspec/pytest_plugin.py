"""A pytest plugin for decoder property suites, registered by the package (the `pytest11` entry point): installed
decspec gives every pytest run its options and fixtures. (From a checkout that is not installed, enable it in your
conftest.py: `pytest_plugins = ["decspec.pytest_plugin"]`.)

Fixtures (session-scoped, so hypothesis tests can use them):

- `assert_lossless`: decspec.testing.assert_lossless with the run's settings (--decspec-method,
  --decspec-samples, --decspec-p-fail, --decspec-backend: `inductor` samples the generated round);
- `assert_greedy_equivalent`: decspec.testing.assert_greedy_equivalent;
- `table_models`: a factory of fixed random table models, `table_models(vocab=4, order=1, seed=0)`
  -> {"target": ..., "draft": ...}.

With --decspec-verify, every .dec file among the collected paths becomes a test that runs the
check of `decspec verify` (`pytest specs/ --decspec-verify`): it fails when a spec the analysis
calls lossless is not, on --decspec-configs random table-model configurations. Specs that check cannot compare —
deterministic ones (beam search) and context-free grammars — are skipped with the reason.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest

from decspec import testing
from decspec.dsl.diagnostics import DecError


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("decspec")
    group.addoption("--decspec-method", default="auto", choices=["auto", "exact", "statistical"], help="how assert_lossless decides (default: auto)")
    group.addoption("--decspec-samples", type=int, default=4000, help="samples for statistical lossless checks (default: 4000)")
    group.addoption("--decspec-p-fail", type=float, default=1e-6, help="false-alarm rate of statistical checks (default: 1e-6)")
    group.addoption("--decspec-backend", default=None, choices=["eager", "exact", "inductor"],
                    help="the backend assert_lossless samples (default: the decoder's own; a spec's: eager); inductor: "
                         "its generated round, checked statistically")
    group.addoption("--decspec-verify", action="store_true", help="collect .dec files as exact losslessness checks")
    group.addoption("--decspec-configs", type=int, default=4, help="random configurations per .dec file (default: 4)")


@pytest.fixture(scope="session")
def assert_lossless(pytestconfig: pytest.Config):
    """assert_lossless(decoder_or_spec, ...) with --decspec-method/--decspec-samples/--decspec-p-fail/--decspec-backend as
    defaults."""
    return functools.partial(
        testing.assert_lossless,
        method=pytestconfig.getoption("decspec_method"),
        samples=pytestconfig.getoption("decspec_samples"),
        p_fail=pytestconfig.getoption("decspec_p_fail"),
        backend=pytestconfig.getoption("decspec_backend"),
    )


@pytest.fixture(scope="session")
def assert_greedy_equivalent():
    return testing.assert_greedy_equivalent


@pytest.fixture(scope="session")
def table_models():
    """A factory: table_models(vocab=4, order=1, seed=0, draft_temperature=2.0) -> {"target": ..., "draft": ...}."""
    from decspec.stdlib.models.table import TableModel

    def make(vocab: int = 4, order: int = 1, seed: int = 0, draft_temperature: float = 2.0) -> dict[str, Any]:
        return {"target": TableModel.random(vocab, order, seed), "draft": TableModel.random(vocab, order, seed + 1, temperature=draft_temperature)}

    return make


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    if file_path.suffix == ".dec" and parent.config.getoption("decspec_verify"):
        return DecFile.from_parent(parent, path=file_path)
    return None


class DecFile(pytest.File):
    def collect(self):
        yield DecVerify.from_parent(self, name="verify")


class SpecNotLossless(Exception):
    pass


class DecVerify(pytest.Item):
    """`decspec verify FILE.dec` as a test."""

    def runtest(self) -> None:
        from decspec.verify import NotVerifiable, verify_spec

        try:
            report = verify_spec(self.path, configs=self.config.getoption("decspec_configs"))
        except NotVerifiable as e:  # deterministic, or a context-free grammar: nothing this check can compare
            pytest.skip(e.diagnostics[0].message)
        if report.exit_code:
            raise SpecNotLossless(str(report))

    def repr_failure(self, excinfo: pytest.ExceptionInfo, style=None) -> str:
        if isinstance(excinfo.value, SpecNotLossless):
            return str(excinfo.value)
        if isinstance(excinfo.value, DecError):
            return excinfo.value.render()
        return super().repr_failure(excinfo)

    def reportinfo(self):
        return self.path, None, f"decspec verify {self.path.name}"
