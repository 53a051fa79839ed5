"""The store's connection settings for RDS, on the local PostgreSQL and MariaDB.

Pre-ping survives a server that killed our connections; pool_recycle replaces old ones; TLS
settings reach each driver and are enforced (a PostgreSQL TLS front of our own, with a CA
made here, shows verification for real); IAM auth puts a fresh token in as the password of
every new connection, and the token shows in no log or error.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import make_url

from batchfarm.actors.backends.store import Store
from batchfarm.actors.backends.store.engine import make_engine, server_connect_args
from batchfarm.actors.errors import StoreError
from batchfarm.actors.settings import StoreSettings
from tests.store.tlsfront import PgTlsFront, Pki

SERVERS = ["postgresql", "mysql"]
PID_SQL = {"postgresql": "SELECT pg_backend_pid()", "mysql": "SELECT CONNECTION_ID()"}
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "AKIDEXAMPLEFLEET",
    "AWS_SECRET_ACCESS_KEY": "not-a-real-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def pid(engine: sa.Engine, backend: str) -> int:
    with engine.connect() as connection:
        return int(connection.exec_driver_sql(PID_SQL[backend]).scalar_one())


def kill_others(admin_url: str, backend: str, database: str) -> int:
    """Kill every connection to ``database`` from the server side; returns how many."""
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            if backend == "postgresql":
                sql = (
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = %s AND pid <> pg_backend_pid()"
                )
                return int(connection.exec_driver_sql(sql, (database,)).scalar_one())
            ids = connection.exec_driver_sql(
                "SELECT id FROM information_schema.processlist WHERE db = %s", (database,)
            ).scalars()
            killed = 0
            for number in list(ids):
                connection.exec_driver_sql(f"KILL {int(number)}")
                killed += 1
            return killed
    finally:
        admin.dispose()


@pytest.mark.parametrize("backend", SERVERS)
def test_pre_ping_recovers_after_the_server_killed_the_connections(backend, new_database, servers):
    url = new_database(backend)
    with Store(url, connect=StoreSettings()) as store:
        before = pid(store.engine, backend)
        database = str(make_url(url).database)
        assert kill_others(str(servers[backend].url.render_as_string(False)), backend, database)
        # The pooled connection is dead; the store reads on through a new one.
        assert store.jobs() == []
        assert pid(store.engine, backend) != before


@pytest.mark.parametrize("backend", SERVERS)
def test_pool_recycle_replaces_old_connections(backend, new_database):
    url = new_database(backend)
    recycled = make_engine(url, StoreSettings(pool_recycle=1))
    kept = make_engine(url, StoreSettings())
    try:
        first = (pid(recycled, backend), pid(kept, backend))
        # Past one second, the recycled engine's connection is replaced; the other is kept.
        threading.Event().wait(1.2)
        assert pid(recycled, backend) != first[0]
        assert pid(kept, backend) == first[1]
    finally:
        recycled.dispose()
        kept.dispose()


def test_pool_recycle_zero_means_never():
    engine = make_engine("postgresql+psycopg://u@db.example/x", StoreSettings(pool_recycle=0))
    assert engine.pool._recycle == -1  # SQLAlchemy's "never"
    assert make_engine("postgresql+psycopg://u@h/x").pool._recycle == 3600


# --- TLS ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def pg_tls(pki: Pki, servers) -> Iterator[PgTlsFront]:
    server = servers["postgresql"].url
    front = PgTlsFront((server.host or "127.0.0.1", server.port or 5432), pki)
    yield front
    front.close()


def via(url: str, front: PgTlsFront, host: str = "127.0.0.1") -> str:
    return make_url(url).set(host=host, port=front.port).render_as_string(False)


def test_postgresql_tls_settings_reach_psycopg(pki):
    url = make_url("postgresql+psycopg://u@db.example/x")
    settings = StoreSettings(ssl_mode="verify-full", ssl_ca=str(pki.ca))
    args = server_connect_args(url, settings)
    assert args == {"connect_timeout": 10, "sslmode": "verify-full", "sslrootcert": str(pki.ca)}
    assert server_connect_args(url, StoreSettings(ssl_mode="require"))["sslmode"] == "require"
    assert "sslmode" not in server_connect_args(url, StoreSettings())


@pytest.mark.parametrize(
    ("mode", "verify", "check_hostname"),
    [
        ("require", ssl.CERT_NONE, False),
        ("verify-ca", ssl.CERT_REQUIRED, False),
        ("verify-full", ssl.CERT_REQUIRED, True),
    ],
)
def test_mysql_tls_settings_reach_pymysql(pki, mode, verify, check_hostname):
    url = make_url("mysql+pymysql://u@db.example/x")
    args = server_connect_args(url, StoreSettings(ssl_mode=mode, ssl_ca=str(pki.ca)))
    context = args["ssl"]
    assert isinstance(context, ssl.SSLContext)  # PyMySQL then refuses a server without TLS
    assert context.verify_mode == verify
    assert context.check_hostname is check_hostname
    if mode != "require":
        names = [dict(item[0] for item in c["subject"]) for c in context.get_ca_certs()]
        assert {"commonName": "batchfarm test CA"} in names
    disabled = server_connect_args(url, StoreSettings(ssl_mode="disable"))
    assert disabled == {"connect_timeout": 10, "ssl_disabled": True}


def test_verifying_needs_a_ca_file(tmp_path):
    url = make_url("postgresql+psycopg://u@db.example/x")
    with pytest.raises(StoreError, match=r"ssl_mode = 'verify-ca' needs \[store\] ssl_ca"):
        server_connect_args(url, StoreSettings(ssl_mode="verify-ca"))
    missing = str(tmp_path / "nope.pem")
    with pytest.raises(StoreError, match=rf"\[store\] ssl_ca '{missing}': no such file"):
        server_connect_args(url, StoreSettings(ssl_mode="verify-full", ssl_ca=missing))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    mysql = make_url("mysql+pymysql://u@db.example/x")
    with pytest.raises(StoreError, match=r"open store mysql\+pymysql://u@db.example/x"):
        server_connect_args(mysql, StoreSettings(ssl_mode="verify-ca", ssl_ca=str(garbage)))


def server_has_tls(backend: str, servers) -> bool:
    engine = sa.create_engine(servers[backend].url)
    sql = "SHOW ssl" if backend == "postgresql" else "SELECT @@have_ssl"
    try:
        with engine.connect() as connection:
            return str(connection.exec_driver_sql(sql).scalar()).lower() in ("on", "yes")
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", SERVERS)
def test_required_tls_is_refused_by_a_server_without_it(backend, new_database, servers):
    url = new_database(backend)
    settings = StoreSettings(ssl_mode="require")
    if server_has_tls(backend, servers):
        # A server with TLS: the connection is encrypted.
        with Store(url, connect=settings) as store:
            assert store.jobs() == []
        return
    with pytest.raises(StoreError) as caught:
        Store(url, connect=settings)
    message = str(caught.value)
    assert message.startswith(f"upgrade schema to head failed on {make_url(url)}: ")
    assert "SSL" in message
    assert "127.0.0.1" in message


def test_postgresql_verify_full_through_tls(pg_tls, new_database, pki):
    url = via(new_database("postgresql"), pg_tls)
    settings = StoreSettings(ssl_mode="verify-full", ssl_ca=str(pki.ca))
    with Store(url, connect=settings) as store:
        assert store.jobs() == []
    assert pg_tls.handshakes >= 1


def test_postgresql_verify_refuses_a_server_the_ca_did_not_sign(pg_tls, new_database, tmp_path):
    other = Pki(tmp_path)  # another CA: the front's certificate is not signed by it
    url = via(new_database("postgresql"), pg_tls)
    with pytest.raises(StoreError) as caught:
        Store(url, connect=StoreSettings(ssl_mode="verify-ca", ssl_ca=str(other.ca)))
    assert f"127.0.0.1:{pg_tls.port}" in str(caught.value)
    assert "certificate verify failed" in str(caught.value)
    assert pg_tls.handshakes == 0


# --- IAM database authentication ------------------------------------------------------


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials in boto3's chain (the environment), as an instance role would give."""
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)


def spy_passwords(engine: sa.Engine) -> list[str]:
    """The password each new connection of ``engine`` hands its driver."""
    seen: list[str] = []

    def record(_dialect: Any, _record: Any, _cargs: Any, cparams: dict[str, Any]) -> None:
        seen.append(cparams.get("password", ""))

    # Listeners run in order: this one sees what the store's own listener put in.
    event.listen(engine, "do_connect", record)
    return seen


def check_token(token: str, host: str, port: int, user: str, region: str) -> None:
    """An RDS auth token: a SigV4-presigned ``connect`` for the user, host and region."""
    assert token.startswith(f"{host}:{port}/?Action=connect&DBUser={user}&")
    query = unquote(token)
    assert f"X-Amz-Credential={AWS_ENV['AWS_ACCESS_KEY_ID']}/" in query
    assert f"/{region}/rds-db/aws4_request" in query
    assert "X-Amz-Signature=" in query
    assert "X-Amz-Expires=900" in query


def test_iam_auth_gives_each_new_connection_a_token_as_its_password(
    aws_credentials, pg_tls, new_database, pki, caplog
):
    url = via(new_database("postgresql"), pg_tls)
    settings = StoreSettings(
        ssl_mode="verify-full", ssl_ca=str(pki.ca), iam_auth=True, region="eu-west-1"
    )
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="sqlalchemy")
    caplog.set_level(logging.DEBUG, logger="batchfarm")
    engine = make_engine(url, settings)
    passwords = spy_passwords(engine)
    try:
        # Two connections at once: two new connections, two tokens. The user has trust
        # auth here, so any password gets in; RDS checks the token's signature.
        with engine.connect() as one, engine.connect() as two:
            assert one.exec_driver_sql("SELECT current_user").scalar() == "root"
            assert two.exec_driver_sql("SELECT 1").scalar() == 1
        assert len(passwords) == 2
        with engine.connect():
            pass  # from the pool: no new connection, no new token
        assert len(passwords) == 2
        engine.dispose()
        with engine.connect():
            pass
        assert len(passwords) == 3
    finally:
        engine.dispose()
    for token in passwords:
        check_token(token, "127.0.0.1", pg_tls.port, "root", "eu-west-1")
        assert token not in caplog.text
    assert pg_tls.handshakes == 3


class Refused(Exception):
    """Stands in for the connect, so no server is dialled."""


def refuse(*_args: Any) -> None:
    raise Refused


def test_iam_auth_region_comes_from_boto3s_chain(aws_credentials):
    engine = make_engine("postgresql+psycopg://app@db.example:6432/x", iam())
    passwords = spy_passwords(engine)
    event.listen(engine, "do_connect", refuse)
    with pytest.raises(Refused):
        engine.connect()
    engine.dispose()
    check_token(passwords[0], "db.example", 6432, "app", AWS_ENV["AWS_DEFAULT_REGION"])


def iam(**overrides: Any) -> StoreSettings:
    return StoreSettings(**{"ssl_mode": "require", "iam_auth": True, **overrides})


def test_a_refused_iam_connection_does_not_show_the_token(aws_credentials, new_database):
    # The local MariaDB has no TLS, so the token never leaves: PyMySQL refuses first.
    url = new_database("mysql")
    engine = make_engine(url, iam())
    passwords = spy_passwords(engine)
    try:
        with pytest.raises(sa.exc.OperationalError) as caught:
            engine.connect()
    finally:
        engine.dispose()
    assert passwords
    assert passwords[0] not in str(caught.value)
    assert "SSL is required" in str(caught.value)


@pytest.mark.parametrize(
    ("url", "settings", "message"),
    [
        (
            "postgresql+psycopg://app@db.example/x",
            iam(ssl_mode=""),
            r'needs TLS: set \[store\] ssl_mode to "require"',
        ),
        (
            "postgresql+psycopg://app@db.example/x",
            iam(ssl_mode="disable"),
            "not 'disable'",
        ),
        (
            "postgresql+psycopg://app:pw@db.example/x",
            iam(),
            "remove the password from the URL",
        ),
        ("mysql+pymysql://db.example/x", iam(), "needs a URL with the database user and host"),
        ("sqlite:////tmp/grid.db", iam(), r"\[store\] ssl_mode is for PostgreSQL and MySQL"),
        (
            "sqlite:////tmp/grid.db",
            StoreSettings(iam_auth=True),
            r"\[store\] iam_auth is for PostgreSQL and MySQL",
        ),
    ],
)
def test_bad_iam_settings_are_refused_at_open(url, settings, message):
    with pytest.raises(StoreError, match=message) as caught:
        make_engine(url, settings)
    assert ":pw@" not in str(caught.value)


def test_iam_auth_without_credentials_names_what_is_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path
):
    for name in (*AWS_ENV, "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    # No shared files, and no instance metadata service to ask.
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    engine = make_engine("postgresql+psycopg://app@db.example/x", iam(region="eu-west-1"))
    try:
        with pytest.raises(StoreError) as caught:
            engine.connect()
    finally:
        engine.dispose()
    assert str(caught.value).startswith(
        "store postgresql+psycopg://app@db.example/x: [store] iam_auth: no token for"
        " app@db.example:5432 (Unable to locate credentials)"
    )
