"""Catalog URLs are parsed without SQLAlchemy (the read commands never import it), in SQLAlchemy's
format: each part as its own parser reads it, the password never in a message."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import make_url

from db.errors import BadCatalogURLError
from db.location import parse

URLS = [
    "sqlite:///relative.db", "sqlite:////absolute/dir/catalog.db", "sqlite:///~/catalog.db",
    "postgresql://sw@127.0.0.1:5432/catalog", "postgresql://sw:s3cr%40t%2Fx@db.example:6543/catalog?sslmode=require&application_name=a",
    "postgres://db.example/catalog", "postgresql+psycopg://u:hunter2@[::1]:5433/c",
]


@pytest.mark.parametrize("text", URLS)
def test_each_part_is_what_sqlalchemy_reads(text):
    ours, theirs = parse(text), make_url(text)
    if ours.backend == "sqlite":
        assert str(ours.path) == str(make_url(text).database).replace("~", str(ours.path.home()), 1)
        assert ours.sqlalchemy_url() == theirs.set(database=str(ours.path))
        return
    assert (ours.username or None, ours.password, ours.host, ours.port, ours.database, ours.query) == (
        theirs.username or None, theirs.password, theirs.host, theirs.port, theirs.database, dict(theirs.query))
    assert ours.sqlalchemy_url() == theirs.set(drivername="postgresql+psycopg")
    if ours.password:  # the URL as written, but for its password
        assert ours.display == text.replace(f":{text.split(':')[2].split('@')[0]}@", ":***@")
        assert ours.password not in ours.display


@pytest.mark.parametrize(("text", "problem"), [
    ("nonsense", "not a database URL"), ("mysql://h/db", "unsupported scheme 'mysql'"), ("sqlite://", "needs a file path"),
    ("sqlite:///:memory:", "needs a file path"), ("postgresql://h", "no database name"), ("postgresql://h:port/db", "not a number"),
])
def test_a_bad_url_is_one_line_naming_it(text, problem):
    with pytest.raises(BadCatalogURLError) as raised:
        parse(text)
    assert problem in str(raised.value) and repr(text) in str(raised.value) and "\n" not in str(raised.value)
