"""Runs tutorial cells the way Jupyter shows them: statements run, a final expression is displayed."""

import ast


def run_cells(cells: list[str]) -> None:
    """Execute cells like a notebook: statements run, a final expression is displayed."""
    namespace: dict = {"__name__": "__tutorial__"}
    for number, source in enumerate(cells, start=1):
        source = source.strip()
        prompt = f"In [{number}]: "
        print(prompt + source.replace("\n", "\n" + " " * len(prompt)))
        tree = ast.parse(source)
        last = tree.body[-1] if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        body = ast.Module(body=tree.body[:-1] if last else tree.body, type_ignores=[])
        exec(compile(body, f"<cell {number}>", "exec"), namespace)
        if last is not None:
            value = eval(compile(ast.Expression(last.value), f"<cell {number}>", "eval"), namespace)
            if value is not None:
                print(f"Out[{number}]: {value!r}")
        print()
    if "sy" in namespace:
        namespace["sy"].shutdown()
