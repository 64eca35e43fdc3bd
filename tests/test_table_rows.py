"""Which rows of a table passage answer a question (rag/answering/table_rows.py): the
rows the question names, and none when no row is the one it asks about."""

from __future__ import annotations

from rag.answering.table_rows import Table, matching_rows, tables

BUDGET = (
    "Sheet: Budget 2025\n| Quarter | Category | Budget | Spent |\n"
    "| Q1 | Travel | $12,000 | 11,500.50 |\n| Q2 | Travel | $9,000 | 9,400.00 |\n"
    "| Q3 | Travel | $15,500 | 14,200.00 |\n| Q1 | Training | $4,000 | 3,650.00 |\n"
    "| Q3 | Training | $6,500 | 6,100.25 |"
)
INVOICES = (
    "| Invoice | Customer | Amount (EUR) | Issued | Status |\n"
    "| INV-1041 | Harbour Foods | 1,250.00 | 2025-03-02 | Paid |\n"
    "| INV-1042 | Nordlicht GmbH | 3,980.50 | 2025-03-09 | Overdue |\n"
    "| INV-1043 | Blue Fern Studio | 640.00 | 2025-03-15 | Paid |"
)
WEEKS = (
    "| Week | Activity | Owner |\n| Week 1 | Accounts, laptop and pass | IT desk |\n"
    "| Week 3 | Product training | Product team |\n| Week 4 | First project review | Line manager |"
)


def table(text: str) -> Table:
    (found,) = tables(text)
    return found


def test_the_row_the_question_names_is_matched():
    assert matching_rows("What was the Q3 training budget?", table(BUDGET)) == [4]
    assert matching_rows("Which customer is invoice INV-1041 for?", table(INVOICES)) == [0]
    # "runs" is in no row (the Owner column answers it): the row still matches
    assert matching_rows("Who runs the product training in week 3?", table(WEEKS)) == [1]


def test_no_row_is_matched_when_none_holds_the_identifier_asked_for():
    # every row shares "INV" with the question, none is invoice 1050
    assert matching_rows("What is the amount of invoice INV-1050?", table(INVOICES)) == []
    assert matching_rows("Who runs the sales training in week 5?", table(WEEKS)) == []


def test_no_row_is_matched_when_none_holds_all_the_row_words_asked_for():
    # Q2 is a Travel row and Training is a Q1 or Q3 row: no row is Q2 training
    assert matching_rows("What was the Q2 training budget?", table(BUDGET)) == []


def test_a_follow_up_naming_no_row_takes_the_rows_its_conversation_names():
    # "its" is the invoice of the previous question, already quoted: quoted again
    joined = "What is its status? invoice Blue Fern Studio"
    assert matching_rows("What is its status?", table(INVOICES), context=joined) == [2]
    # a follow-up that names a row of its own keeps to it
    joined = "And in week 4? happens week 1 onboarding"
    assert matching_rows("And in week 4?", table(WEEKS), context=joined) == [2]
