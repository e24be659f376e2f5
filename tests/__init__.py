"""The test suite; its folders mirror the caphuman package (tests/<folder>/ tests caphuman/<folder>/)."""
