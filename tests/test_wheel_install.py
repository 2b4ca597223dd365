"""ledger as its users get it: the wheel, installed into a fresh virtualenv, used
from a project of their own outside this repository, through the CLI and the
pytest plugin."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tomllib
import venv
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from ledger import DISTRIBUTION
from ledger.dynamodb.local import find_jar

ROOT = Path(__file__).parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
WHEEL_GLOB = f"{DISTRIBUTION.replace('-', '_')}-*.whl"
"""The wheel's file name: its distribution name with '-' as '_' (PEP 427)."""

SHOP = {
    "shop/__init__.py": "",
    "shop/app.py": '''
        """A user's own domain: baskets with items."""

        from eventsourcing.application import Application
        from eventsourcing.domain import Aggregate, event


        class Basket(Aggregate):
            @event("Opened")
            def __init__(self, owner: str) -> None:
                self.owner = owner
                self.items: list[str] = []

            @event("ItemAdded")
            def add(self, item: str) -> None:
                self.items.append(item)


        class Shop(Application):
            def open_basket(self, owner: str, *items: str):
                basket = Basket(owner)
                for item in items:
                    basket.add(item)
                self.save(basket)
                return basket.id
    ''',
    "shop/views.py": '''
        """A user's own read model and projector."""

        from ledger.projections import Projector, ReadModel, handles
        from shop.app import Basket


        class ItemCount(ReadModel):
            id: str
            items: int = 0


        class BasketViews(Projector):
            name = "BasketViews"

            @handles(Basket.ItemAdded)
            def added(self, event, models):
                if event.item == "broken":
                    raise ValueError("cannot count a broken item")
                count = models.get(ItemCount, "all") or ItemCount(id="all")
                models.put(count.model_copy(update={"items": count.items + 1}))
    ''',
    "pyproject.toml": """
        [tool.ledger]
        app = "shop.app:Shop"
        projectors = ["shop.views:BasketViews"]
    """,
    "seed.py": """
        import sys

        from shop.app import Shop

        shop = Shop()
        for n in range(int(sys.argv[1])):
            shop.open_basket("ada", "tea", "broken" if n == 0 else "cake")
    """,
    "tests/test_shop.py": """
        from shop.app import Shop


        def test_a_basket_is_stored_on_dynamodb_local(dynamodb_env):
            shop = Shop(env=dynamodb_env)
            basket_id = shop.open_basket("ada", "tea")
            assert shop.repository.get(basket_id).items == ["tea"]
            assert shop.recorder.events_table_name.startswith(
                dynamodb_env["DYNAMODB_TABLE_PREFIX"]
            )
    """,
}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the wheel installed as the README says, by name.

    ``pip install 'NAME[cli,testing]'`` with the wheel's folder as a link:
    pip also asks the package index for NAME, and takes the index's release
    if it has a higher version (as it did when the name was ``ledger``).
    """
    work = tmp_path_factory.mktemp("wheel")
    pip = [sys.executable, "-m", "pip"]
    subprocess.run(  # noqa: S603 - pip with fixed arguments
        [*pip, "wheel", "--quiet", "--no-deps", "--wheel-dir", str(work), str(ROOT)],
        check=True,
        timeout=600,
    )
    [_] = work.glob(WHEEL_GLOB)
    env_dir = work / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run(  # noqa: S603 - pip with fixed arguments
        [
            *(str(python), "-m", "pip", "install", "--quiet"),
            *("--find-links", str(work)),
            f"{PROJECT['name']}[cli,testing]",
        ],
        check=True,
        timeout=900,
    )
    return env_dir


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    """A user's project, outside this repository."""
    for name, text in SHOP.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    return tmp_path


def run_in(
    project: Path, env_dir: Path, env: dict[str, str], *argv: str
) -> subprocess.CompletedProcess[str]:
    """Run a command of the virtualenv in the user's project folder."""
    environment = {
        key: value
        for key, value in {**os.environ, **env}.items()
        if key not in ("PYTHONPATH", "VIRTUAL_ENV")
    }
    environment.update(
        {
            "PATH": f"{env_dir / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            "COLUMNS": "200",
            "NO_COLOR": "1",
            "DYNAMODB_LOCAL_JAR": str(find_jar(ROOT)),
        }
    )
    return subprocess.run(  # noqa: S603 - the virtualenv's own commands
        [str(env_dir / "bin" / argv[0]), *argv[1:]],
        capture_output=True,
        text=True,
        cwd=project,
        env=environment,
        timeout=300,
        check=False,
    )


@pytest.mark.slow
def test_the_wheel_holds_only_the_ledger_package(installed):
    wheels = list((installed.parent).glob(WHEEL_GLOB))
    with zipfile.ZipFile(wheels[0]) as wheel:
        top_level = {name.split("/")[0] for name in wheel.namelist()}

    assert {t for t in top_level if not t.endswith(".dist-info")} == {"ledger"}


def test_the_distribution_is_named_where_ledger_looks_itself_up() -> None:
    assert PROJECT["name"] == DISTRIBUTION
    # `make install` installs the dev group, which names the checkout itself
    assert f"{DISTRIBUTION}[cli,testing]" in PYPROJECT["dependency-groups"]["dev"]


@pytest.mark.slow
def test_the_wheel_declares_its_name_licence_and_classifiers(installed):
    [wheel_path] = installed.parent.glob(WHEEL_GLOB)
    with zipfile.ZipFile(wheel_path) as wheel:
        [metadata_name] = [n for n in wheel.namelist() if n.endswith("/METADATA")]
        metadata = Parser().parsestr(wheel.read(metadata_name).decode())
        licence = [n for n in wheel.namelist() if n.endswith("/licenses/LICENSE")]

    assert metadata["Name"] == DISTRIBUTION
    assert metadata["Version"] == PROJECT["version"]
    assert metadata["License-Expression"] == "MIT"
    assert metadata.get_all("License-File") == ["LICENSE"]
    assert licence
    assert "Typing :: Typed" in metadata.get_all("Classifier")


@pytest.mark.slow
def test_a_users_own_app_runs_through_the_installed_cli(installed, shop, dynamodb_env):
    def ledger(*argv: str) -> subprocess.CompletedProcess[str]:
        return run_in(shop, installed, dynamodb_env, "ledger", *argv)

    seeded = run_in(shop, installed, dynamodb_env, "python", "seed.py", "3")
    assert seeded.returncode == 0, seeded.stderr
    no_example = run_in(
        shop, installed, dynamodb_env, "python", "-c", "import aggregates"
    )
    assert no_example.returncode == 1  # the example domain is not installed

    version = ledger("--version")
    module_version = run_in(
        shop, installed, dynamodb_env, "python", "-m", "ledger", "--version"
    )
    listed = ledger("projections", "list", "--json")
    rebuilt = ledger("projections", "rebuild", "BasketViews")
    status = ledger("projections", "status", "BasketViews", "--json")
    parked = ledger("projections", "dlq", "list", "BasketViews", "--json")
    ran = ledger("projections", "run", "BasketViews", "--feed", "sequence", "--once")
    unknown = ledger("projections", "status", "Nope")

    # the index's own `ledger` never answers in its place
    assert version.stdout == f"{DISTRIBUTION} {PROJECT['version']}\n"
    assert module_version.stdout == version.stdout
    assert listed.returncode == 0, listed.stderr
    assert '"BasketViews": "shop.views:BasketViews"' in listed.stdout
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "rebuilt BasketViews as v2" in rebuilt.stdout
    assert status.returncode == 0, status.stderr
    assert '"active_version": 2' in status.stdout
    assert '"parked": 1' in status.stdout
    assert parked.returncode == 0, parked.stderr
    assert '"error": "ValueError' in parked.stdout
    assert "cannot count" not in parked.stdout  # the message may quote event data
    assert ran.returncode == 0, ran.stderr
    assert "processed 0 events from the sequence" in ran.stdout
    assert unknown.returncode == 2
    assert "known: BasketViews" in unknown.stderr


@pytest.mark.slow
def test_the_pytest_plugin_gives_a_users_tests_dynamodb_local(installed, shop):
    tested = run_in(shop, installed, {}, "python", "-m", "pytest", "-q", "tests")

    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "1 passed" in tested.stdout
