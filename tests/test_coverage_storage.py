"""Storage options refused before anything is contacted, each message naming the kind and the option."""

import pytest

from functionfuse.errors import InvalidOptionError
from functionfuse.storage import storage_factory


@pytest.mark.parametrize("s3fs", [["anon", True], "anon=True", 3])
def test_s3fs_options_that_are_not_a_dict_are_refused_naming_the_option(s3fs):
    with pytest.raises(InvalidOptionError, match=r'storage kind "S3": the option "s3fs" must be a dict'):
        storage_factory({"kind": "S3", "options": {"path": "bucket/prefix", "s3fs": s3fs}})
