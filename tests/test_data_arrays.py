"""User arrays: every format loads, every problem is reported with the file name."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from ddchm.data.arrays import load_array, split_train_valid_test


def test_npy_and_npz_load_as_float32(tmp_path):
    data = np.arange(12, dtype=np.int64).reshape(4, 3)
    np.save(tmp_path / "a.npy", data)
    np.savez(tmp_path / "one.npz", x=data)
    np.savez(tmp_path / "two.npz", x=data, y=data + 1.5)
    for result in (
        load_array(tmp_path / "a.npy"),
        load_array(tmp_path / "one.npz"),
        load_array(tmp_path / "two.npz", key="x"),
    ):
        assert result.dtype == np.float32 and np.array_equal(result, data)
    assert load_array(tmp_path / "two.npz", key="y")[0, 0] == 1.5
    bools = np.array([[True, False], [False, True]])
    np.save(tmp_path / "b.npy", bools)
    assert np.array_equal(load_array(tmp_path / "b.npy", observation="bernoulli"), bools)


def test_npz_with_several_arrays_needs_a_key(tmp_path):
    np.savez(tmp_path / "two.npz", images=np.zeros((2, 2)), labels=np.zeros((2, 1)))
    with pytest.raises(ValueError, match=r"two.npz: holds 2 arrays \(images, labels\)"):
        load_array(tmp_path / "two.npz")
    with pytest.raises(ValueError, match="two.npz: no array named 'x'; it holds: images, labels"):
        load_array(tmp_path / "two.npz", key="x")


@pytest.mark.parametrize(
    "name, text",
    [
        ("h.csv", "a,b,c\n1,2,3\n4,5,6\n"),
        ("n.csv", "1,2,3\n4,5,6\n"),
        ("t.tsv", "1\t2\t3\n4\t5\t6\n"),
        ("s.csv", "x;y;z\n1;2;3\n\n4;5;6\n"),
        ("w.txt", "1 2  3\n 4 5 6\n"),
    ],
)
def test_text_formats_and_header_detection(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    assert load_array(tmp_path / name).tolist() == [[1, 2, 3], [4, 5, 6]]


def test_gzipped_csv(tmp_path):
    (tmp_path / "d.csv.gz").write_bytes(gzip.compress(b"0,1\n1,0\n"))
    assert load_array(tmp_path / "d.csv.gz", observation="bernoulli").tolist() == [[0, 1], [1, 0]]


def test_nan_in_csv_names_file_row_and_column(tmp_path):
    rows = ["a,b,c"] + ["1,2,3"] * 16 + ["1,2,nan"] + ["1,2,3"]
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=r"data.csv: row 17, column 3 is NaN"):
        load_array(tmp_path / "data.csv")


def test_inf_in_npy(tmp_path):
    data = np.zeros((3, 2))
    data[1, 0] = -np.inf
    data[2, 1] = np.inf
    np.save(tmp_path / "x.npy", data)
    with pytest.raises(ValueError, match=r"x.npy: row 2, column 1 is -inf .*2 non-finite"):
        load_array(tmp_path / "x.npy")


def test_one_dimensional_array_suggests_reshape(tmp_path):
    np.save(tmp_path / "v.npy", np.zeros(5))
    with pytest.raises(ValueError, match=r"v.npy: .*1-D.*reshape\(-1, 1\)"):
        load_array(tmp_path / "v.npy")
    np.save(tmp_path / "img.npy", np.zeros((4, 2, 3)))
    with pytest.raises(ValueError, match=r"img.npy: .*reshape\(4, -1\) -> \(4, 6\)"):
        load_array(tmp_path / "img.npy")
    np.save(tmp_path / "s.npy", np.float64(3))
    with pytest.raises(ValueError, match="scalar"):
        load_array(tmp_path / "s.npy")


def test_non_numeric_csv(tmp_path):
    (tmp_path / "bad.csv").write_text("x,y\n1,2\n3,abc\n")
    with pytest.raises(
        ValueError, match=r"bad.csv: row 2 \(line 3\), column 2 is not a number: 'abc'"
    ):
        load_array(tmp_path / "bad.csv")
    (tmp_path / "gap.csv").write_text("1,2\n3,\n")
    with pytest.raises(ValueError, match=r"gap.csv: row 2 \(line 2\), column 2 is empty"):
        load_array(tmp_path / "gap.csv")
    (tmp_path / "ragged.csv").write_text("1,2\n3,4,5\n")
    with pytest.raises(ValueError, match="ragged.csv: row 2 .* 3 columns"):
        load_array(tmp_path / "ragged.csv")
    (tmp_path / "header_only.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="header_only.csv: only a header"):
        load_array(tmp_path / "header_only.csv")


def test_non_numeric_npy(tmp_path):
    np.save(tmp_path / "str.npy", np.array([["a", "b"]]))
    with pytest.raises(TypeError, match="str.npy: expected numeric data"):
        load_array(tmp_path / "str.npy")
    np.save(tmp_path / "obj.npy", np.array([[{}, 1]], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="obj.npy: not a readable .npy"):
        load_array(tmp_path / "obj.npy")


def test_non_binary_values_for_bernoulli(tmp_path):
    data = np.zeros((20, 4))
    data[16, 2] = 0.5
    np.save(tmp_path / "p.npy", data)
    assert load_array(tmp_path / "p.npy", observation="gaussian").shape == (20, 4)
    assert load_array(tmp_path / "p.npy", observation="laplace").shape == (20, 4)
    with pytest.raises(ValueError, match=r"p.npy: a Bernoulli layer.*row 17, column 3"):
        load_array(tmp_path / "p.npy", observation="bernoulli")


def test_missing_file_unknown_extension_and_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.npy: no such file"):
        load_array(tmp_path / "nothere.npy")
    (tmp_path / "d.parquet").write_bytes(b"")
    with pytest.raises(ValueError, match=r"d.parquet: unknown extension '.parquet'; supported"):
        load_array(tmp_path / "d.parquet")
    np.save(tmp_path / "a.npy", np.zeros((2, 2)))
    with pytest.raises(ValueError, match="observation"):
        load_array(tmp_path / "a.npy", observation="poisson")
    with pytest.raises(ValueError, match="key"):
        load_array(tmp_path / "a.npy", key="x")
    (tmp_path / "empty.csv").write_text("\n")
    with pytest.raises(ValueError, match="empty.csv: the file is empty"):
        load_array(tmp_path / "empty.csv")


def test_split_train_valid_test():
    data = np.arange(100).reshape(50, 2)
    parts = split_train_valid_test(data, seed=3)
    assert [len(parts[k]) for k in ("train", "valid", "test")] == [40, 5, 5]
    rows = np.concatenate([parts[k][:, 0] for k in ("train", "valid", "test")])
    assert sorted(rows.tolist()) == data[:, 0].tolist()  # a partition of the rows
    again = split_train_valid_test(data, seed=3)
    assert all(np.array_equal(parts[k], again[k]) for k in parts)
    assert not np.array_equal(parts["train"], split_train_valid_test(data, seed=4)["train"])
    tensor_parts = split_train_valid_test(torch.as_tensor(data), (0.6, 0.2, 0.2), seed=3)
    assert isinstance(tensor_parts["test"], torch.Tensor) and len(tensor_parts["test"]) == 10
    with pytest.raises(ValueError, match="fractions"):
        split_train_valid_test(data, (0.5, 0.2, 0.2))
    with pytest.raises(ValueError, match="fractions"):
        split_train_valid_test(data, (0.5, 0.5))


def test_values_beyond_float32_are_named_not_turned_into_inf(tmp_path):
    big = np.ones((3, 2))
    big[1, 0] = 1e39
    np.save(tmp_path / "big.npy", big)
    with pytest.raises(ValueError, match=r"row 2, column 1 is 1e\+39, too large for float32"):
        load_array(tmp_path / "big.npy")
    assert load_array(tmp_path / "big.npy", dtype=np.float64)[1, 0] == 1e39


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

ANY_ARRAY = hnp.arrays(
    dtype=st.sampled_from([np.float64, np.float32, np.float16, np.int64, np.uint8, np.bool_]),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
)


def loads_or_raises_documented_error(path, **kwargs):
    """load_array's contract: a finite 2-D float32 matrix, or ValueError / TypeError naming the
    file."""
    try:
        array = load_array(path, **kwargs)
    except (ValueError, TypeError) as error:
        assert str(path) in str(error) or "observation" in str(error)
        return None
    assert array.ndim == 2 and array.dtype == np.float32 and np.isfinite(array).all()
    return array


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(array=ANY_ARRAY, observation=st.sampled_from([None, "bernoulli", "gaussian"]))
def test_any_saved_array_loads_or_raises_a_named_error(tmp_path, array, observation):
    np.save(tmp_path / "a.npy", array)
    loaded = loads_or_raises_documented_error(tmp_path / "a.npy", observation=observation)
    if loaded is not None:
        assert loaded.shape == array.shape
        if observation == "bernoulli":
            assert set(np.unique(loaded)) <= {0.0, 1.0}


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    blob=st.one_of(
        st.binary(max_size=300),
        st.text(alphabet="0123456789.,-e \n\tnaNif;x", max_size=200).map(str.encode),
    ),
    extension=st.sampled_from([".npy", ".npz", ".csv", ".txt", ".csv.gz"]),
)
def test_any_file_bytes_load_or_raise_a_named_error(tmp_path, blob, extension):
    path = tmp_path / f"f{extension}"
    path.write_bytes(blob)
    loads_or_raises_documented_error(path)
