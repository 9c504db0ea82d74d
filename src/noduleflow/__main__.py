from noduleflow.cli import main

main()
