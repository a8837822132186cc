from .handlers import main

main()
