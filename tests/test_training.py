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
    history = training.fit(loss, params, (x, y), key=jax.random.PRNGKey(1), epochs=5, batch_size=32,
                           evaluate_fn=evaluate, log=lines.append).history
    assert history[-1]["loss"] < 0.6 * history[0]["loss"]
    assert history[-1]["train_accuracy"] > 0.9
    assert len(lines) == 5 and lines[0].startswith("epoch   1 loss ") and "ex/s" in lines[0]
    assert set(history[0]) == {"epoch", "loss", "seconds", "examples_per_second", "train_loss", "train_accuracy"}
    with pytest.raises(ValueError, match="must not reuse the names"):
        training.fit(loss, params, (x, y), key=jax.random.PRNGKey(1), epochs=1, batch_size=32,
                     evaluate_fn=lambda p: {"loss": 0.0}, log=None)


def test_fit_is_deterministic(rng):
    _, params, loss, x, y = toy_problem(rng)
    runs = [training.fit(loss, params, (x, y), key=jax.random.PRNGKey(3), epochs=2, batch_size=64, log=None).params
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
    history = training.fit(loss, params, (x, y), key=jax.random.PRNGKey(0), epochs=np.int64(1),
                           batch_size=np.int32(32), log=None).history
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


@pytest.mark.parametrize("optimizer", [
    pytest.param(optax.sgd(0.1), id="sgd"),
    pytest.param(optax.sgd(0.1, momentum=0.9), id="sgd-momentum"),
    pytest.param(optax.adam(1e-3), id="adam"),
    pytest.param(optax.adamw(1e-3), id="adamw"),
    pytest.param(optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3)), id="chain"),
    pytest.param(optax.inject_hyperparams(optax.sgd)(learning_rate=0.1), id="inject-hyperparams"),
    pytest.param(optax.MultiSteps(optax.adam(1e-3), every_k_schedule=2), id="multi-steps"),
    pytest.param(optax.masked(optax.adam(1e-3), {"w": True, "b": False}), id="masked"),
])
def test_save_params_refuses_every_optax_state_before_writing(tmp_path, optimizer):
    """The .npz export round-trips what it describes or refuses it; an optimizer state goes to Orbax."""
    state = optimizer.init({"w": jnp.ones((2, 2)), "b": jnp.zeros(2)})
    with pytest.raises(TypeError, match=r"a NamedTuple, such as an optax state.*training.fit\(\.\.\., checkpoint_dir"):
        save_params(tmp_path / "state.npz", state)
    assert not (tmp_path / "state.npz").exists()


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


# Resumable runs: fit's Orbax checkpoints. A run stopped anywhere and resumed ends bit for bit where the
# same run straight through does (the CPU is deterministic), whatever stopped it.

import os
import shutil
import subprocess
import sys

import killed_while_saving

TIMING = ("seconds", "examples_per_second")  # of the steps run in each call: all a resumed history may differ in

OPTIMIZERS = [
    pytest.param(optax.sgd(0.1, momentum=0.9), jax.random.PRNGKey(1), id="sgd-momentum"),
    pytest.param(optax.adam(1e-2), jax.random.key(1), id="adam-typed-key"),
]


def assert_same_run(resumed, straight):
    """The same params, optimizer state and history, to the bit, but for the timings."""
    chex_equal = lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b), strict=True)
    assert jax.tree_util.tree_structure(resumed.opt_state) == jax.tree_util.tree_structure(straight.opt_state)
    jax.tree_util.tree_map(chex_equal, (resumed.params, resumed.opt_state), (straight.params, straight.opt_state))
    untimed = lambda history: [{k: v for k, v in record.items() if k not in TIMING} for record in history]
    assert untimed(resumed.history) == untimed(straight.history)


def steps_saved(directory):
    return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


@pytest.fixture
def run():
    """``run(epochs, **fit_kwargs)``: killed_while_saving's problem, trained by ``fit`` (4 epochs of 8 steps)."""
    loss, params, data, kwargs = killed_while_saving.problem()
    return lambda epochs, params=params, **more: training.fit(loss, params, data, epochs=epochs, **{**kwargs, **more})


@pytest.mark.parametrize("optimizer, key", OPTIMIZERS)
def test_two_epochs_resumed_for_two_more_equal_four_straight(run, tmp_path, optimizer, key):
    straight = run(4, optimizer=optimizer, key=key)
    first = run(2, optimizer=optimizer, key=key, checkpoint_dir=tmp_path)
    assert steps_saved(tmp_path) == [8, 16] and len(first.history) == 2  # one checkpoint an epoch, named by step
    lines = []
    resumed = run(4, optimizer=optimizer, key=key, checkpoint_dir=tmp_path, log=lines.append)
    assert lines[0] == f"resumed from {tmp_path / '16'}: epoch 3, batch 0, step 16"
    assert steps_saved(tmp_path) == [16, 24, 32]  # max_to_keep=3
    assert_same_run(resumed, straight)
    again = run(4, optimizer=optimizer, key=key, checkpoint_dir=tmp_path)  # done: restores, trains nothing
    assert_same_run(again, straight)


def test_a_run_resumes_part_way_through_an_epoch(run, tmp_path):
    """``save_every`` counts steps: checkpoints mid-epoch, from which the epoch goes on at the next batch."""
    straight = run(4)
    run(4, checkpoint_dir=tmp_path, save_every=5, max_to_keep=None)
    assert steps_saved(tmp_path) == [5, 10, 15, 20, 25, 30, 32]  # and the last step
    for step in (15, 20, 25, 30, 32):  # as if killed just after step 10's checkpoint
        shutil.rmtree(tmp_path / str(step))
    lines = []
    assert_same_run(run(4, checkpoint_dir=tmp_path, log=lines.append), straight)
    assert lines[0].endswith("epoch 2, batch 2, step 10")


def test_an_interrupted_run_saves_where_it_stopped(run, tmp_path):
    """Ctrl-C (here in the third epoch's evaluation) saves the last whole step before it propagates."""
    straight = run(4)

    def interrupted_in_epoch_3(params):
        if interrupted_in_epoch_3.calls == 2:
            raise KeyboardInterrupt
        interrupted_in_epoch_3.calls += 1
        return {}

    interrupted_in_epoch_3.calls = 0
    with pytest.raises(KeyboardInterrupt):
        run(4, checkpoint_dir=tmp_path, evaluate_fn=interrupted_in_epoch_3)
    assert steps_saved(tmp_path) == [8, 16, 23]  # step 24 ended the epoch, but its record was not made
    assert_same_run(run(4, checkpoint_dir=tmp_path), straight)


@pytest.mark.slow  # a fresh process that trains and is killed: 7 s, the default run's longest test
def test_a_run_killed_while_writing_a_checkpoint_resumes_from_the_last_complete_one(run, tmp_path):
    straight = run(4)
    killed = subprocess.run([sys.executable, killed_while_saving.__file__, str(tmp_path), "3"], capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr  # SIGKILL, as the third checkpoint (step 24) was being completed
    assert sorted(os.listdir(tmp_path)) == ["16", "24.orbax-checkpoint-tmp", "8"]
    lines = []
    assert_same_run(run(4, checkpoint_dir=tmp_path, log=lines.append), straight)
    assert lines[0].endswith("epoch 3, batch 0, step 16")
    assert sorted(os.listdir(tmp_path)) == ["16", "24", "32"]  # the half-written one cleared away, then made anew


@pytest.mark.parametrize("change, message", [
    pytest.param(dict(resume=False), r"holds checkpoints \(the latest at step 16\), which resume=False would "
                 "overwrite", id="resume-false"),
    pytest.param(dict(batch_size=16), "was made with batch_size 32, not the `batch_size` 16 given", id="batch-size"),
    pytest.param(dict(epochs=1), "has trained past epoch 1, the `epochs` given", id="fewer-epochs"),
    pytest.param(dict(optimizer=optax.sgd(0.1, momentum=0.9)), "does not fit the optimizer state: at opt_state/0/",
                 id="other-optimizer"),
    pytest.param(dict(params=[{"w": jnp.zeros((4, 16)), "b": jnp.zeros(16)}, {}, {"w": jnp.zeros((16, 2)),
                                                                                  "b": jnp.zeros(2)}]),
                 r"does not fit `params`: at params/0/b it holds float32\[8\], where `params` has float32\[16\]",
                 id="other-widths"),
    pytest.param(dict(params="bfloat16"), r"at params/0/b it holds float32\[8\], where `params` has bfloat16\[8\]",
                 id="other-dtype"),
])
def test_resuming_refuses_a_checkpoint_of_another_run(run, tmp_path, change, message):
    run(2, checkpoint_dir=tmp_path)
    loss, params, data, kwargs = killed_while_saving.problem()
    if change.get("params") == "bfloat16":
        change["params"] = jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16), params)
    arguments = {**kwargs, "epochs": 2, "checkpoint_dir": tmp_path, "params": params, **change}
    with pytest.raises(ValueError, match=message):
        training.fit(loss, data=data, **arguments)
    assert steps_saved(tmp_path) == [8, 16]  # nothing written


def test_fit_returns_the_optimizer_state_to_train_on(run):
    first = run(1)
    assert isinstance(first, training.Fitted) and int(first.opt_state[0].count) == 8  # adam's count of steps
    more = run(1, params=first.params, opt_state=first.opt_state)
    assert int(more.opt_state[0].count) == 16


def test_a_progress_bar_shows_the_loss_and_examples_per_second_on_a_terminal(run, capsys):
    run(1, progress=True)
    bar = capsys.readouterr().err
    assert "epoch 1/1" in bar and "ex/s" in bar and "loss 0." in bar
    run(1)  # progress=None: stderr is not a terminal under pytest
    assert capsys.readouterr().err == ""


# --- models with state and randomness ----------------------------------------------------------


def stateful_problem(rng, n=96):
    """A Dense-BatchNorm-Relu-Dropout-Dense classifier: its loss, params, state, data and evaluate_fn."""
    x = jnp.asarray(rng.standard_normal((n, 5)), jnp.float32)
    y = jnp.asarray((x[:, 0] - x[:, 2] > 0).astype(np.int32))
    model = layers.serial(layers.Dense(16), layers.BatchNorm(momentum=0.9), layers.Relu(), layers.Dropout(0.3),
                          layers.Dense(2))
    _, params = model.init(jax.random.PRNGKey(0), x.shape)

    def loss(params, state, key, x, y):
        logits, state = model.apply(params, x, state=state, key=key, train=True)
        return purebp.softmax_cross_entropy_with_integer_labels(logits, y).mean(), state

    def evaluate(params, state):  # in evaluation: the running statistics, no dropout
        apply = lambda variables, x: model.apply(variables[0], x, state=variables[1], train=False)[0]
        return {"test_" + k: v for k, v in training.evaluate(
            apply, (params, state), x, y, loss_fn=purebp.softmax_cross_entropy_with_integer_labels).items()}

    return model, loss, params, model.init_state(x.shape), (x, y), evaluate


def test_a_step_with_state_and_a_key_carries_the_state_and_differentiates_the_params(rng):
    model, loss, params, state, (x, y), _ = stateful_problem(rng)
    optimizer = optax.sgd(0.1)
    step = training.make_train_step(loss, optimizer, has_state=True, has_key=True)
    key = jax.random.PRNGKey(4)
    new_params, _, new_state, value = step(params, optimizer.init(params), state, key, x, y)
    (want_loss, want_state), grads = jax.value_and_grad(loss, has_aux=True)(params, state, key, x, y)
    assert float(value) == pytest.approx(float(want_loss), rel=1e-6)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), new_state, want_state)
    jax.tree_util.tree_map(lambda p, g, new: np.testing.assert_allclose(new, p - 0.1 * g, rtol=1e-5, atol=1e-7),
                           params, grads, new_params)
    with pytest.raises(TypeError, match="`has_state` must be a bool, got 1"):
        training.make_train_step(loss, optimizer, has_state=1)


def test_fit_threads_the_state_evaluates_with_it_and_resumes_it_bit_for_bit(rng, tmp_path):
    model, loss, params, state, data, evaluate = stateful_problem(rng)
    kwargs = dict(key=jax.random.PRNGKey(1), batch_size=16, log=None, state=state, has_key=True, evaluate_fn=evaluate)
    straight = training.fit(loss, params, data, epochs=3, **kwargs)
    assert straight.history[-1]["test_accuracy"] > 0.75 and straight.history[-1]["loss"] < straight.history[0]["loss"]
    assert not np.allclose(straight.state[1]["mean"], 0)  # the running statistics moved
    trained_params, _, history = straight  # unpacks as a run without state does
    assert trained_params is straight.params and len(history) == 3
    training.fit(loss, params, data, epochs=1, checkpoint_dir=tmp_path, **kwargs)
    resumed = training.fit(loss, params, data, epochs=3, checkpoint_dir=tmp_path, **kwargs)
    assert_same_run(resumed, straight)
    jax.tree_util.tree_map(np.testing.assert_array_equal, resumed.state, straight.state)
    other = layers.serial(layers.Dense(16), layers.BatchNorm(), layers.Relu(), layers.Dense(2)).init_state((1, 5))
    with pytest.raises(ValueError, match=r"does not fit the model's `state`: at state/1/mean it holds float32\[16\], "
                                         r"where the model's `state` has nothing"):
        training.fit(loss, params, data, epochs=3, checkpoint_dir=tmp_path, **{**kwargs, "state": other[:1]})


def test_fit_draws_a_new_dropout_key_each_step(rng):
    _, loss, params, state, data, _ = stateful_problem(rng)
    seen = []
    spy = lambda params, state, key, x, y: (jax.debug.callback(lambda k: seen.append(np.asarray(k)), key),
                                            loss(params, state, key, x, y))[1]
    training.fit(spy, params, data, key=jax.random.PRNGKey(1), epochs=2, batch_size=32, log=None, state=state,
                 has_key=True)
    assert len(seen) == 6 and len({k.tobytes() for k in seen}) == 6  # a fresh key at every step
