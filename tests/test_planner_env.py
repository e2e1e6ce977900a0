"""The Sokoban environment against hand-made levels, the Boxoban text format, the Gymnasium wrapper,
and generated levels solved by a breadth-first search."""

import collections

import numpy as np
import pytest
import torch

from circuitflow.planner.levels import DIRECTIONS, format_level, format_levels, generate_level, generate_levels, parse_levels
from circuitflow.planner.sokoban import BatchedSokoban, SokobanEnv

UP, DOWN, LEFT, RIGHT = range(4)

# player in a corridor: box to the right, target beyond it, another box and target below
LEVEL = """\
; 0
#######
#@$ . #
# $   #
# .   #
#######
"""


def game(text=LEVEL, max_steps=120):
    return BatchedSokoban.from_levels(parse_levels(text), max_steps)


def act(env, *actions):
    results = [env.step(torch.tensor([a])) for a in actions]
    return [(round(float(r[0]), 4), bool(d[0]), bool(s[0])) for r, d, s in results]


def test_the_text_format_reads_every_symbol_and_writes_it_back():
    text = "; 7\n#####\n#+$ #\n#*. #\n# $ #\n#####\n\n; 8\n####\n#@$.#\n####\n"
    first, second = parse_levels(text)
    assert first.player == (1, 1) and first.targets[1, 1] and first.targets[2, 1] and first.boxes[2, 1]
    assert int(first.boxes.sum()) == int(first.targets.sum()) == 3 and first.walls[0].all()
    assert parse_levels(format_levels([first, second])) == [first, second]
    assert format_level(second) == "#### \n#@$.#\n#### "  # short rows are padded with floor


@pytest.mark.parametrize("text, message", [
    ("#####\n#@x #\n#####", "has 'x' at row 1, column 2"),
    ("#####\n# $.#\n#####", "has 0 players"),
    ("#####\n#@$ #\n#####", "has 1 boxes and 0 targets"),
])
def test_bad_levels_are_one_sentence(text, message):
    with pytest.raises(ValueError, match=message):
        parse_levels(text)


def test_moves_walls_and_pushes():
    env = game()
    assert act(env, UP) == [(-0.1, False, False)]  # into the wall: nothing moves
    assert env.player.tolist() == [[1, 1]]
    assert act(env, DOWN) == [(-0.1, False, False)]  # onto floor
    assert env.player.tolist() == [[2, 1]]
    act(env, RIGHT)  # push the lower box right (into floor)
    assert env.player.tolist() == [[2, 2]] and env.boxes[0, 2, 3] and not env.boxes[0, 2, 2]


def test_a_box_cannot_be_pushed_into_a_wall_or_another_box():
    env = game("; 0\n######\n#@$$.#\n#  . #\n######\n")
    act(env, RIGHT)  # box into box
    assert env.player.tolist() == [[1, 1]] and env.boxes[0, 1, 2] and env.boxes[0, 1, 3]
    env = game("; 0\n#####\n# @ #\n# $.#\n#####\n")
    act(env, DOWN)  # box into the bottom wall
    assert env.player.tolist() == [[1, 2]] and env.boxes[0, 2, 2]


def test_boxoban_rewards_onto_off_and_solved():
    env = game("; 0\n#######\n#@$. .#\n#    $#\n#######\n")
    assert act(env, RIGHT) == [(0.9, False, False)]  # box onto a target: -0.1 + 1
    assert act(env, RIGHT) == [(-1.1, False, False)]  # and off it again: -0.1 - 1
    env = game("; 0\n#####\n#@$.#\n#####\n")
    assert act(env, RIGHT) == [(10.9, True, True)]  # the last box onto a target: -0.1 + 1 + 10
    assert bool(env.solved()[0])


def test_the_episode_ends_after_max_steps_and_reset_restores_the_level():
    env = game(max_steps=3)
    assert [done for _, done, _ in act(env, UP, UP, UP)] == [False, False, True]
    act(env, DOWN, RIGHT)
    env.reset(torch.tensor([0]))
    fresh = game()
    assert torch.equal(env.observe(), fresh.observe()) and env.steps.tolist() == [0]


def test_many_environments_step_like_one_each():
    levels = generate_levels(6, (1, 2), 12, seed=3)
    batched = BatchedSokoban.from_levels(levels)
    singles = [BatchedSokoban.from_levels([level]) for level in levels]
    actions = torch.randint(4, (30, len(levels)), generator=torch.Generator().manual_seed(0))
    for step in actions:
        reward, done, _ = batched.step(step)
        for i, single in enumerate(singles):
            r, d, _ = single.step(step[i : i + 1])
            assert float(r[0]) == float(reward[i]) and bool(d[0]) == bool(done[i])
    assert torch.equal(batched.observe(), torch.cat([single.observe() for single in singles]))


def test_the_gymnasium_wrapper_follows_the_interface():
    from gymnasium.utils.env_checker import check_env

    env = SokobanEnv(parse_levels("; 0\n######\n#@$. #\n######\n; 1\n######\n#@ $.#\n######\n"))
    check_env(env, skip_render_check=True)
    obs, info = env.reset(seed=0)
    assert obs.shape == (4, 3, 6) and info == {"level": 0} and obs.dtype == np.float32
    obs, reward, terminated, truncated, info = env.step(RIGHT)
    assert (round(reward, 4), terminated, truncated, info) == (10.9, True, False, {"solved": True})
    assert env.reset()[1] == {"level": 1} and round(env.step(LEFT)[1], 4) == -0.1


def solve(level, limit=200_000):
    """Breadth-first search over (player, boxes): the shortest action sequence, or None."""
    walls = level.walls
    goal = frozenset(map(tuple, np.argwhere(level.targets)))
    start = (tuple(level.player), frozenset(map(tuple, np.argwhere(level.boxes))))
    parent = {start: None}
    queue = collections.deque([start])
    while queue and len(parent) < limit:
        state = queue.popleft()
        (row, col), boxes = state
        if boxes == goal:
            path = []
            while parent[state] is not None:
                state, action = parent[state]
                path.append(action)
            return path[::-1]
        for action, (dr, dc) in enumerate(DIRECTIONS):
            ahead, new_boxes = (row + dr, col + dc), boxes
            if walls[ahead]:
                continue
            if ahead in boxes:
                beyond = (row + 2 * dr, col + 2 * dc)
                if walls[beyond] or beyond in boxes:
                    continue
                new_boxes = (boxes - {ahead}) | {beyond}
            new = (ahead, new_boxes)
            if new not in parent:
                parent[new] = (state, action)
                queue.append(new)
    return None


@pytest.mark.parametrize("size, boxes", [(6, (1, 2)), (7, (2, 3)), (10, (4, 4))])
def test_generated_levels_are_solvable_and_the_env_agrees(size, boxes):
    levels = generate_levels(size, boxes, 8, seed=11)
    for level in levels:
        assert level.shape == (size, size) and level.walls[0].all() and level.walls[:, -1].all()
        assert not (level.boxes & level.targets).any() and boxes[0] <= level.boxes.sum() <= boxes[1]
        path = solve(level)
        assert path, format_level(level)
        env = BatchedSokoban.from_levels([level])
        outcomes = [env.step(torch.tensor([a])) for a in path]
        assert [bool(done[0]) for _, done, _ in outcomes] == [False] * (len(path) - 1) + [True]
        assert bool(outcomes[-1][2][0])


def test_generation_is_deterministic_per_seed():
    assert generate_level(8, 2, seed=5) == generate_level(8, 2, seed=5)
    assert len({format_level(generate_level(8, 2, seed=s)) for s in range(10)}) == 10
    with pytest.raises(ValueError, match="size >= 5"):
        generate_level(4, 1, seed=0)
