from distill_kit.cli import main

main()
