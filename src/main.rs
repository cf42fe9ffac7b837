fn main() {
    std::process::exit(servesim::app::main_with_args(std::env::args_os()));
}
