"""Training: the jitted step updates params, a short run lowers the loss, batching is deterministic."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import purebp
from purebp import layers, training
from purebp.checkpoint import load_params, save_params


def toy_problem(rng, n=256):
    x = jnp.asarray(rng.standard_normal((n, 4)), jnp.float32)
    y = jnp.asarray((x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int32))
    model = layers.serial(layers.Dense(8), layers.Tanh(), layers.Dense(2))
    _, params = model.init(jax.random.PRNGKey(0), x.shape)

    def loss(params, x, y):
        return purebp.softmax_cross_entropy_with_integer_labels(model.apply(params, x), y).mean()

    return model, params, loss, x, y


def test_step_changes_params_as_optax_does(rng):
    _, params, loss, x, y = toy_problem(rng)
    optimizer = optax.sgd(0.1, momentum=0.9)
    step = training.make_train_step(loss, optimizer)
    new_params, opt_state, value = step(params, optimizer.init(params), x, y)
    updates, _ = optimizer.update(jax.jit(jax.grad(loss))(params, x, y), optimizer.init(params), params)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                           new_params, optax.apply_updates(params, updates))
    assert float(value) == pytest.approx(float(loss(params, x, y)), rel=1e-6)
    assert not np.allclose(new_params[0]["w"], params[0]["w"])


def test_fit_lowers_the_loss_and_reports(rng):
    model, params, loss, x, y = toy_problem(rng)
    lines = []
    evaluate = lambda p: {"train_" + k: v for k, v in training.evaluate(
        model.apply, p, x, y, loss_fn=purebp.softmax_cross_entropy_with_integer_labels, batch_size=100).items()}
    _, history = training.fit(loss, params, (x, y), key=jax.random.PRNGKey(1), epochs=5, batch_size=32,
                              evaluate_fn=evaluate, log=lines.append)
    assert history[-1]["loss"] < 0.6 * history[0]["loss"]
    assert history[-1]["train_accuracy"] > 0.9
    assert len(lines) == 5 and lines[0].startswith("epoch   1 loss ") and "ex/s" in lines[0]
    assert set(history[0]) == {"epoch", "loss", "seconds", "examples_per_second", "train_loss", "train_accuracy"}
    with pytest.raises(ValueError, match="must not reuse the names"):
        training.fit(loss, params, (x, y), key=jax.random.PRNGKey(1), epochs=1, batch_size=32,
                     evaluate_fn=lambda p: {"loss": 0.0}, log=None)


def test_fit_is_deterministic(rng):
    _, params, loss, x, y = toy_problem(rng)
    runs = [training.fit(loss, params, (x, y), key=jax.random.PRNGKey(3), epochs=2, batch_size=64, log=None)[0]
            for _ in range(2)]
    jax.tree_util.tree_map(np.testing.assert_array_equal, *runs)


def test_batches_are_a_key_driven_permutation():
    x, y = np.arange(10), np.arange(10) * 2
    first = list(training.batches(jax.random.PRNGKey(0), (x, y), 4))
    again = list(training.batches(jax.random.PRNGKey(0), (x, y), 4))
    other = list(training.batches(jax.random.PRNGKey(1), (x, y), 4))
    assert [len(b[0]) for b in first] == [4, 4, 2]
    assert sorted(np.concatenate([b[0] for b in first])) == list(range(10))
    assert all(np.array_equal(b[1], 2 * b[0]) for b in first)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(first, again))
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(first, other))
    assert [len(b[0]) for b in training.batches(jax.random.PRNGKey(0), (x,), 4, drop_remainder=True)] == [4, 4]
    assert [list(b[0]) for b in training.batches(None, (x,), 5, shuffle=False)] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]


def test_batches_reject_bad_arguments():
    with pytest.raises(ValueError, match=r"`arrays` must share their leading dim, got lengths \[3, 4\]"):
        next(training.batches(None, (np.zeros(3), np.zeros(4)), 2))
    with pytest.raises(ValueError, match="`batch_size` must be a positive int, got 0"):
        next(training.batches(None, (np.zeros(3),), 0))


def test_training_takes_numpy_counts_and_names_the_habits_it_refuses(rng):
    model, params, loss, x, y = toy_problem(rng)
    assert [len(b[0]) for b in training.batches(None, (x[:10],), np.int64(4), shuffle=False)] == [4, 4, 2]
    _, history = training.fit(loss, params, (x, y), key=jax.random.PRNGKey(0), epochs=np.int64(1),
                              batch_size=np.int32(32), log=None)
    assert len(history) == 1
    with pytest.raises(TypeError, match=r"`data` must be a tuple of arrays .* got an array of shape \(256, 4\); "
                                        r"pass \(x, y\)"):
        training.fit(loss, params, x, key=jax.random.PRNGKey(0), epochs=1, batch_size=32, log=None)
    for bad in (True, 0, 2.0):
        with pytest.raises(ValueError, match=f"`batch_size` must be a positive int, got {bad!r}"):
            training.fit(loss, params, (x, y), key=jax.random.PRNGKey(0), epochs=1, batch_size=bad, log=None)
    with pytest.raises(ValueError, match="`inputs` must hold at least one example, got none"):
        training.evaluate(model.apply, params, x[:0], y[:0], loss_fn=purebp.softmax_cross_entropy_with_integer_labels)


def test_evaluate_counts_every_example(rng):
    outputs = jnp.asarray(rng.standard_normal((10, 3)), jnp.float32)
    labels = jnp.asarray([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    metrics = training.evaluate(lambda p, x: x, None, outputs, labels,
                                loss_fn=purebp.softmax_cross_entropy_with_integer_labels, batch_size=3)
    assert metrics["accuracy"] == pytest.approx(float(jnp.mean(outputs.argmax(-1) == labels)))
    assert metrics["loss"] == pytest.approx(float(purebp.softmax_cross_entropy_with_integer_labels(outputs, labels)
                                                  .mean()), rel=1e-6)


@pytest.mark.parametrize("outputs, labels, expected", [
    pytest.param([[2.0, 1.0], [0.0, 3.0]], [0, 0], 0.5, id="argmax-int"),
    pytest.param([[2.0, 1.0], [0.0, 3.0]], [[1.0, 0.0], [0.0, 1.0]], 1.0, id="argmax-one-hot"),
    pytest.param([[1.5], [-0.5], [0.2]], [1.0, 0.0, 0.0], 2 / 3, id="binary-logits"),
])
def test_accuracy(outputs, labels, expected):
    assert float(training.accuracy(jnp.asarray(outputs), jnp.asarray(labels))) == pytest.approx(expected)


def test_checkpoint_round_trip(tmp_path, rng):
    _, params, _, _, _ = toy_problem(rng)
    params = params + [{"scale": jnp.ones(3, jnp.bfloat16)}, (jnp.arange(2),), None]
    save_params(tmp_path / "params.npz", params)
    loaded = load_params(tmp_path / "params.npz")
    assert jax.tree_util.tree_structure(loaded) == jax.tree_util.tree_structure(params)
    assert loaded[1] == {} and loaded[3]["scale"].dtype == jnp.bfloat16 and isinstance(loaded[4], tuple)
    jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, params)


def test_checkpoint_rejects_what_it_cannot_describe(tmp_path):
    with pytest.raises(TypeError, match="dict keys must be strings"):
        save_params(tmp_path / "p.npz", {1: jnp.ones(2)})
    with pytest.raises(TypeError, match="leaves must be arrays, got str"):
        save_params(tmp_path / "p.npz", {"w": "weights"})
    with pytest.raises(TypeError, match="got a TraceState \\(a NamedTuple, such as an optax state\\)"):
        save_params(tmp_path / "state.npz", optax.sgd(0.1, momentum=0.9).init({"w": jnp.ones(2)}))
    with pytest.raises(TypeError, match="must be numeric arrays, got an array of Python objects of shape \\(2,\\)"):
        save_params(tmp_path / "state.npz", {"w": np.array([1, "a"], dtype=object)})
    assert not (tmp_path / "state.npz").exists()  # refused before anything is written


def write_npz(path, structure, **arrays):
    """An .npz as save_params lays it out, with a structure of our choosing."""
    np.savez(path, **arrays, __structure__=np.asarray(json.dumps(structure)))
    return path


@pytest.mark.parametrize("structure, arrays, message", [
    pytest.param({"leaf": [0, "float64"]}, {"leaf_0": np.ones(4, np.float32)},
                 "leaf 0 is stored as float32, but the structure says float64", id="dtype-lies"),
    pytest.param({"leaf": [0, "bfloat16"]}, {"leaf_0": np.ones(4, np.float32)},
                 "leaf 0 is stored as float32, but the structure says bfloat16", id="raw-size-lies"),
    pytest.param({"set": [{"leaf": [0, "float32"]}]}, {"leaf_0": np.ones(4, np.float32)},
                 "the file's structure holds the unknown node \\{'set'", id="unknown-node"),
    pytest.param({"leaf": [0, "float32", 7]}, {"leaf_0": np.ones(4, np.float32)},
                 "malformed 'leaf' node", id="malformed-leaf"),
    pytest.param({"list": [{"leaf": [0, "float32"]}, {"leaf": [1, "float32"]}]}, {"leaf_0": np.ones(4, np.float32)},
                 "the structure names leaf 1, which the file does not hold", id="missing-leaf"),
    pytest.param({"list": [{"leaf": [0, "float32"]}, {"leaf": [0, "float32"]}]}, {"leaf_0": np.ones(4, np.float32)},
                 "names twice", id="leaf-twice"),
    pytest.param({"leaf": [0, "float32"]}, {"leaf_0": np.ones(4, np.float32), "leaf_1": np.ones(1)},
                 "holds arrays its structure does not place: \\['leaf_1'\\]", id="unused-array"),
    pytest.param({"leaf": [0, "float3"]}, {"leaf_0": np.ones(4, np.float32)},
                 "leaf 0 has the unknown dtype 'float3'", id="unknown-dtype"),
])
def test_load_params_refuses_what_save_params_did_not_write(tmp_path, structure, arrays, message):
    with pytest.raises(ValueError, match=message):
        load_params(write_npz(tmp_path / "bad.npz", structure, **arrays))


def test_load_params_refuses_other_numpy_files(tmp_path):
    np.save(tmp_path / "array.npy", np.ones(3))
    with pytest.raises(ValueError, match="is not a file written by save_params .* got an .npy array"):
        load_params(tmp_path / "array.npy")
    np.savez(tmp_path / "plain.npz", w=np.ones(3))
    with pytest.raises(ValueError, match="got an .npz without it"):
        load_params(tmp_path / "plain.npz")
