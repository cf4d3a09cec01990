"""The run spine: a recipe's steps executed in order, resumable, budgeted, each output measured and saved.

``pipeline`` builds the run, ``loop`` executes its steps, ``store`` keeps what they produced, ``resume`` decides
what a rerun may reuse, ``starting_models`` brings the teachers and student in, ``sweep`` runs one recipe many ways.
"""
